%%% @doc The HTTP connections: admission, caps and deadlines, so slow or greedy clients
%%% cannot starve the service.
%%%
%%% MochiWeb's own limits are per header line (30 s each, 1000 lines) and a 2048-socket
%%% ceiling past which it stops accepting: a few thousand connections dribbling one byte
%%% now and then hold it forever. Here every connection is a row in a public ets table
%%% with its phase and that phase's deadline:
%%%
%%% <pre>
%%% header    from accept, and after each reply (keep-alive idle)    header_timeout_ms
%%% body      from the end of the headers until the body is read      body_timeout_ms
%%% handling  the request runs (bounded by the job's own timeout)     none
%%% wait      a long poll for a job's end (bounded by its own wait)   none
%%% reply     writing the answer to the client                       body_timeout_ms
%%% </pre>
%%%
%%% A sweeper ends connections past their deadline. Admission counts connections in all
%%% and per peer address; a new connection over a cap closes an older connection that
%%% waits (header, body, reply or wait phase) rather than being refused: over the peer's cap
%%% one of that peer's, over the total one of the peer holding the most. So a flood evicts
%%% itself, a legitimate request gets in, and a slow one loses its slot. Only when every
%%% connection is busy handling a request (a bounded number: jobs have a per-client share)
%%% is the new one refused. Connection
%%% processes update their own rows; nothing here is a call on a request's path.
-module(bbc_conns).
-behaviour(gen_server).

-export([start_link/0, serve/3, phase/1, count/0, busy/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(TAB, bbc_conns).
-define(SWEEP_MS, 200).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc MochiWeb's connection loop, wrapped: admit, then serve requests with `Body'.
-spec serve(term(), list(), term()) -> no_return().
serve(Socket, Opts, Body) ->
    Peer = case mochiweb_socket:peername(Socket) of
               {ok, {Addr, _Port}} -> Addr;
               _ -> unknown
           end,
    case admit(Peer) of
        ok -> mochiweb_http:loop(Socket, Opts, Body);
        full ->
            mochiweb_socket:close(Socket),
            exit({shutdown, too_many_connections})
    end.

%% @doc Enter a phase, which sets its deadline. `wait' is a long poll: bounded by its own
%% timeout, and evictable, since the client waits on the service and not the reverse.
-spec phase(header | body | handling | wait | reply) -> ok.
phase(Phase) ->
    Deadline = case Phase of
                   handling -> infinity;
                   wait -> infinity;
                   header -> now_ms() + bbc_config:get(header_timeout_ms);
                   _ -> now_ms() + bbc_config:get(body_timeout_ms)
               end,
    _ = catch ets:update_element(?TAB, self(), [{3, Phase}, {4, Deadline}]),
    ok.

%% @doc Open connections now.
-spec count() -> non_neg_integer().
count() -> counter(total).

%% @doc Connections with a request in flight (running it, or in a long poll).
-spec busy() -> [pid()].
busy() ->
    ets:select(?TAB, [{{'$1', '_', '$2', '_'}, [{is_pid, '$1'}, {'orelse', {'=:=', '$2', handling},
                                                                   {'=:=', '$2', wait}}], ['$1']}]).

%%% ------------------------------------------------------------------ admission

admit(Peer) ->
    Me = self(),
    ets:insert(?TAB, {Me, Peer, header, now_ms() + bbc_config:get(header_timeout_ms)}),
    gen_server:cast(?MODULE, {watch, Me}),
    _ = ets:update_counter(?TAB, {count, total}, 1, {{count, total}, 0}),
    _ = ets:update_counter(?TAB, {count, Peer}, 1, {{count, Peer}, 0}),
    case make_room(Peer, bbc_config:get(max_connections_per_peer)) of
        ok -> make_room('_', bbc_config:get(max_connections));
        full -> full
    end.

%% Over the per-peer cap, the peer's own oldest waiting connection goes; over the total
%% cap, one of the peer that holds the most. So a flood evicts its own connections first,
%% and a peer with a connection or two is the last to lose one.
make_room(Peer, Max) when Peer =/= '_' ->
    case counter(Peer) > Max of
        false -> ok;
        true -> evict_oldest(Peer)
    end;
make_room('_', Max) ->
    case counter(total) > Max of
        false -> ok;
        true ->
            Peers = ets:select(?TAB, [{{{count, '$1'}, '$2'}, [{'=/=', '$1', total}], [{{'$2', '$1'}}]}]),
            evict_from([P || {_, P} <- lists:reverse(lists:sort(Peers))])
    end.

evict_from([]) -> full;
evict_from([Peer | Rest]) ->
    case evict_oldest(Peer) of
        ok -> ok;
        full -> evict_from(Rest)
    end.

%% The peer's connection that has waited longest on its client (a long poll, whose wait has
%% no deadline of its own, last).
evict_oldest(Peer) ->
    Waiting = ets:select(?TAB, [{{'$1', Peer, '$2', '$3'},
                                 [{'=/=', '$1', self()}, {'=/=', '$2', handling}],
                                 [{{'$3', '$1'}}]}]),
    case Waiting of
        [] -> full;
        _ ->
            {_, Oldest} = lists:min(Waiting),
            %% Out of the counts at once, so the next admission sees the room made.
            forget(Oldest),
            exit(Oldest, {shutdown, evicted}),
            ok
    end.

%%% ------------------------------------------------------------------ server

-spec init([]) -> {ok, #{}}.
init([]) ->
    _ = ets:new(?TAB, [named_table, public, set, {write_concurrency, true}]),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {ok, #{}}.

-spec handle_call(term(), gen_server:from(), S) -> {reply, {error, unknown_call}, S}.
handle_call(_Request, _From, S) -> {reply, {error, unknown_call}, S}.

-spec handle_cast(term(), S) -> {noreply, S}.
handle_cast({watch, Pid}, S) ->
    _ = erlang:monitor(process, Pid),
    {noreply, S};
handle_cast(_Msg, S) -> {noreply, S}.

-spec handle_info(term(), S) -> {noreply, S}.
handle_info({'DOWN', _, process, Pid, _}, S) ->
    forget(Pid),
    {noreply, S};
handle_info(sweep, S) ->
    Now = now_ms(),
    Late = ets:select(?TAB, [{{'$1', '_', '$2', '$3'},
                              [{is_pid, '$1'}, {'=/=', '$2', handling}, {'<', '$3', Now}],
                              [{{'$1', '$2'}}]}]),
    [begin forget(Pid), exit(Pid, {shutdown, {deadline, Phase}}) end || {Pid, Phase} <- Late],
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {noreply, S};
handle_info(_Msg, S) -> {noreply, S}.

%%% ------------------------------------------------------------------ internals

%% Remove a connection's row and its counts, once (the row is the token).
forget(Pid) ->
    case ets:take(?TAB, Pid) of
        [{Pid, Peer, _, _}] ->
            _ = ets:update_counter(?TAB, {count, total}, -1, {{count, total}, 1}),
            _ = ets:update_counter(?TAB, {count, Peer}, -1, {{count, Peer}, 1}),
            %% A peer with no connection left has no row (the table is bounded by connections).
            _ = ets:select_delete(?TAB, [{{{count, Peer}, 0}, [], [true]}]),
            ok;
        [] -> ok
    end.

counter(Key) ->
    case ets:lookup(?TAB, {count, Key}) of
        [{_, N}] -> N;
        [] -> 0
    end.

now_ms() -> erlang:monotonic_time(millisecond).
