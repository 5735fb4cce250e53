%%% @doc The worker nodes: starts and supervises N local ones (OTP's peer module), joins
%%% the ones named in the config, and reports each node's load.
%%%
%%% Nothing here blocks: a local worker boots in a holder process of its own (linked here,
%%% and to its peer, so a worker never outlives the service), a remote node is connected
%%% from a short-lived process (a hung node can take net_setuptime), and the nodes and their
%%% states are published in a public ets table that readers (jobs, /health) read without
%%% calling this server. A local worker that dies is started again after a short delay; a
%%% configured node that goes away is reconnected periodically. Jobs use whatever workers
%%% are up when they start; bbc_plists reruns the chunks of a node that dies mid-job.
%%%
%%% Other nodes connected to the service node (a Python web worker's node, a receiver, a
%%% remote shell) are its peers: listed with their host and connection type, and probed like
%%% workers when they are Erlang. A non-Erlang node answers no BIF; one that exposes
%%% `beambridge_node:info/0' (a map: os_pid, role, exposes, rpc_calls, connections...) is
%%% described by its own answer.
-module(bbc_nodes).
-behaviour(gen_server).

-export([start_link/0, workers/0, configured/0, peers/0, info/0, await_local/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TAB, bbc_nodes).
-define(RESTART_MS, 1000).
-define(RECONNECT_MS, 2000).
-define(RPC_MS, 2000).
%% A peer that answers neither Erlang's BIFs nor beambridge_node:info/0 (a C node, a
%% Jinterface one, a hung one) is asked again only this often: each answer it does not give
%% costs ?RPC_MS, and /cluster is polled every second.
-define(PEER_RETRY_MS, 15000).
-define(PEERS, bbc_nodes_peers).

%% Node name => #{role, status, holder (local ones)}.
-type state() :: #{node() => map()}.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The worker nodes that are up now.
-spec workers() -> [node()].
workers() -> [N || #{name := N, status := up} <- configured()].

%% @doc Every configured worker with its role and status (from the table, no call).
-spec configured() -> [#{name := node(), role := local | remote, status := up | down}].
configured() ->
    try lists:sort([#{name => N, role => R, status => St} || {N, R, St} <- ets:tab2list(?TAB)])
    catch error:badarg -> []  % between two lives of this server
    end.

%% @doc The other nodes connected to this one (visible or hidden) that are not configured
%% workers: Python nodes, shells, clients.
-spec peers() -> [node()].
peers() ->
    Workers = [N || #{name := N} <- configured()],
    lists:sort([N || N <- nodes(connected), not lists:member(N, Workers)]).

%% @doc One map per node, the service node first, then the workers, then the peers: name,
%% role, status, load figures, connections and its distribution carrier (`dist': inet_tcp,
%% inet_tls...). The probes of all nodes run at once, each bounded, so a hung node costs
%% ?RPC_MS (twice, for a peer that is not Erlang).
-spec info() -> [map()].
info() ->
    Self = #{name => node(), role => service, status => up},
    All = [Self | configured()] ++ [#{name => N, role => peer, status => up} || N <- peers()],
    Parent = self(),
    Tags = [begin
                Tag = make_ref(),
                _ = spawn_link(fun() -> Parent ! {Tag, describe(N)} end),
                Tag
            end || N <- All],
    [receive {Tag, Described} -> Described end || Tag <- Tags].

%% @doc Wait (bounded) until every local worker has booted once, or failed to: what the
%% entry point does before it says the service is ready.
-spec await_local(non_neg_integer()) -> ok | timeout.
await_local(Ms) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    await_local_until(Deadline).

await_local_until(Deadline) ->
    Pending = [N || #{role := local, status := down, name := N} <- configured(),
                    not persistent_term:get({?MODULE, tried, N}, false)],
    case Pending of
        [] -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> timeout;
                false -> timer:sleep(50), await_local_until(Deadline)
            end
    end.

%%% ------------------------------------------------------------------ server

-spec init([]) -> {ok, state()}.
init([]) ->
    process_flag(trap_exit, true),
    ok = net_kernel:monitor_nodes(true),
    _ = ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}]),
    %% Written by the readers of info/0 (request processes): what a silent peer last said.
    _ = ets:new(?PEERS, [named_table, public, set]),
    Count = bbc_config:get(local_nodes),
    Count > 0 andalso node() =:= nonode@nohost andalso
        logger:error("bbc_nodes: local worker nodes need a distributed service node (-name)"),
    Local = maps:from_list([{local_name(I), #{role => local, status => down, holder => undefined}}
                            || I <- lists:seq(1, Count), node() =/= nonode@nohost]),
    Remote = maps:from_list([{binary_to_atom(N), #{role => remote, status => down}}
                             || N <- bbc_config:get(nodes)]),
    S0 = maps:merge(Remote, Local),
    [persistent_term:erase({?MODULE, tried, N}) || N <- maps:keys(Local)],
    S1 = maps:map(fun(Name, #{role := local} = N) -> start_local(Name, N);
                     (Name, #{role := remote} = N) -> connect(Name, N)
                  end, S0),
    {ok, publish(S1)}.

-spec handle_call(term(), gen_server:from(), state()) -> {reply, {error, unknown_call}, state()}.
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

-spec handle_cast(term(), state()) -> {noreply, state()}.
handle_cast(_Msg, S) -> {noreply, S}.

-spec handle_info(term(), state()) -> {noreply, state()}.
handle_info({booted, Holder, Name, Result}, S) when is_map_key(Name, S) ->
    persistent_term:put({?MODULE, tried, Name}, true),
    case {maps:get(Name, S), Result} of
        {#{holder := Holder} = N, ok} ->
            logger:info("bbc_nodes: worker ~p up", [Name]),
            {noreply, publish(S#{Name := N#{status := up}})};
        {#{holder := Holder} = N, {error, Why}} ->
            logger:error("bbc_nodes: worker ~p failed to start: ~0p", [Name, Why]),
            erlang:send_after(?RESTART_MS * 5, self(), {restart, Name}),
            {noreply, publish(S#{Name := N#{status := down, holder := undefined}})};
        _ -> {noreply, S}
    end;
handle_info({connected, Name, true}, S) when is_map_key(Name, S) ->
    {noreply, publish(S#{Name := (maps:get(Name, S))#{status := up}})};
handle_info({connected, Name, false}, S) when is_map_key(Name, S) ->
    erlang:send_after(?RECONNECT_MS, self(), {restart, Name}),
    {noreply, S};
handle_info({'EXIT', Pid, Reason}, S) ->
    case [N || {N, #{holder := H}} <- maps:to_list(S), H =:= Pid] of
        [Name] ->
            logger:warning("bbc_nodes: worker ~p stopped (~0p); restarting", [Name, Reason]),
            erlang:send_after(?RESTART_MS, self(), {restart, Name}),
            {noreply, publish(S#{Name := (maps:get(Name, S))#{status := down, holder := undefined}})};
        [] -> {noreply, S}
    end;
handle_info({nodedown, Name}, S) when not is_map_key(Name, S) ->
    %% A peer that left: when it comes back it may be another program.
    ets:delete(?PEERS, Name),
    {noreply, S};
handle_info({nodedown, Name}, S) when is_map_key(Name, S) ->
    Node = maps:get(Name, S),
    case Node of
        #{role := remote} -> erlang:send_after(?RECONNECT_MS, self(), {restart, Name});
        _ -> ok
    end,
    {noreply, publish(S#{Name := Node#{status := down}})};
handle_info({restart, Name}, S) when is_map_key(Name, S) ->
    case maps:get(Name, S) of
        #{status := up} -> {noreply, S};
        #{role := local, holder := undefined} = N -> {noreply, publish(S#{Name := start_local(Name, N)})};
        #{role := remote} = N -> {noreply, S#{Name := connect(Name, N)}};
        _ -> {noreply, S}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

-spec terminate(term(), state()) -> ok.
terminate(_Reason, S) ->
    %% Each holder stops its peer (and the node with it) before it goes.
    Holders = [H || {_, #{holder := H}} <- maps:to_list(S), is_pid(H)],
    [H ! stop || H <- Holders],
    [receive {'EXIT', H, _} -> ok after 10000 -> exit(H, kill) end || H <- Holders],
    ok.

%%% ------------------------------------------------------------------ internals

publish(S) ->
    ets:insert(?TAB, [{N, R, St} || {N, #{role := R, status := St}} <- maps:to_list(S)]),
    S.

%% The holder boots the peer (which can take up to its wait_boot), says how it went, then
%% keeps it: linked to both, so the worker goes when either the service or the node does.
start_local(Name, Node) ->
    Server = self(),
    Holder = spawn_link(fun() -> hold(Server, Name) end),
    Node#{status => down, holder => Holder}.

hold(Server, Name) ->
    process_flag(trap_exit, true),
    case boot(Name) of
        {ok, Peer} ->
            Server ! {booted, self(), Name, ok},
            receive
                stop -> catch peer:stop(Peer);
                {'EXIT', Server, Why} -> catch peer:stop(Peer), exit(Why);
                {'EXIT', Peer, Why} -> exit({worker_down, Why})
            end;
        {error, Why} ->
            Server ! {booted, self(), Name, {error, Why}}
    end.

boot(Name) ->
    [Base, Host] = string:split(atom_to_list(Name), "@"),
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    %% Same code path as ours (minus OTP's own), same cookie, same distribution carrier
    %% (TLS when we run it), on loopback.
    Paths = [P || P <- code:get_path(), not lists:prefix(code:root_dir(), P), P =/= "."],
    {CookieArgs, Env} = cookie_source(),
    Args = CookieArgs ++ dist_args() ++ ["-connect_all", "false",
                          "-kernel", "inet_dist_use_interface", inet_interface(), "-pa" | Paths],
    Opts = #{name => list_to_atom(Base), host => Host, longnames => net_kernel:longnames(),
             exec => Erl, args => Args, env => Env, wait_boot => 30000},
    try peer:start_link(Opts) of
        {ok, Pid, Name} -> {ok, Pid};
        Other -> {error, Other}
    catch Class:Why -> {error, {Class, Why}}
    end.

%% The arguments that chose this node's distribution carrier (-proto_dist inet_tls and its
%% -ssl_dist_optfile / -ssl_dist_opt), passed on as given: a worker that spoke another one
%% could not join (and bbc_config:refuse_dist/1 made sure a configured dist_optfile is ours).
dist_args() ->
    lists:append([[[$- | atom_to_list(Flag)] | Values]
                  || Flag <- [proto_dist, ssl_dist_optfile, ssl_dist_opt],
                     {ok, Uses} <- [init:get_argument(Flag)], Values <- Uses]).

local_name(I) ->
    [Base, Host] = string:split(atom_to_list(node()), "@"),
    list_to_atom(Base ++ "_w" ++ integer_to_list(I) ++ "@" ++ Host).

%% A worker reads the cookie where this node did: the same $HOME/.erlang.cookie (a file
%% only our user can read), never a -setcookie argument that every local user can see in
%% the process list. Only a cookie set at run time that differs from the file's goes on
%% the command line, with a warning.
cookie_source() ->
    Home = os:getenv("HOME", ""),
    Env = [{"HOME", Home}, {"XDG_CONFIG_HOME", os:getenv("XDG_CONFIG_HOME", filename:join(Home, ".config"))}],
    Ours = atom_to_list(erlang:get_cookie()),
    case file:read_file(filename:join(Home, ".erlang.cookie")) of
        {ok, Bin} ->
            case string:trim(binary_to_list(Bin)) of
                Ours -> {[], Env};
                _ -> visible_cookie(Ours, Env)
            end;
        _ -> visible_cookie(Ours, Env)
    end.

visible_cookie(Cookie, Env) ->
    logger:warning("bbc_nodes: the cookie is not the one in $HOME/.erlang.cookie; local workers get it "
                   "on their command line, where local users can read it"),
    {["-setcookie", Cookie], Env}.

inet_interface() ->
    case application:get_env(kernel, inet_dist_use_interface) of
        {ok, Ip} -> lists:flatten(io_lib:format("~p", [Ip]));
        undefined -> "{127,0,0,1}"
    end.

%% From a process of its own: connecting to a hung node can take net_setuptime.
connect(Name, Node) ->
    Server = self(),
    _ = spawn(fun() -> Server ! {connected, Name, net_kernel:connect_node(Name) =:= true} end),
    Node.

describe(#{name := Name, role := peer} = N) ->
    Facts = maps:merge(N, connection(Name)),
    Now = erlang:monotonic_time(millisecond),
    Silent = try ets:lookup(?PEERS, Name) of
                 [{_, Until}] -> Until > Now;
                 [] -> false
             catch error:badarg -> false
             end,
    case Silent orelse rpc:call(Name, os, getpid, [], ?RPC_MS) of
        true -> Facts#{kind => other};
        Pid when is_list(Pid) -> (describe(Facts#{role := erlang_peer}))#{role := peer, kind => erlang};
        _ ->
            case described_by_itself(Name, Facts) of
                #{kind := other} = Other ->
                    catch ets:insert(?PEERS, {Name, Now + ?PEER_RETRY_MS}),
                    Other;
                Told -> Told
            end
    end;
describe(#{name := Name, status := up} = N) ->
    %% Plain BIF calls only: a joined node need not have our modules.
    Probes = [{os_pid, os, getpid, []},
              {otp_release, erlang, system_info, [otp_release]},
              {schedulers, erlang, system_info, [schedulers_online]},
              {run_queue, erlang, statistics, [run_queue]},
              {process_count, erlang, system_info, [process_count]},
              {memory_bytes, erlang, memory, [total]},
              {dist, init, get_argument, [proto_dist]},
              {connections, erlang, nodes, [connected]}],
    Base = case N of
               #{role := service} ->
                   case string:split(atom_to_binary(Name), <<"@">>) of
                       [_, Host] -> N#{kind => erlang, host => Host};
                       _ -> N#{kind => erlang}
                   end;
               #{role := erlang_peer} -> N;
               _ -> maps:merge(N#{kind => erlang}, connection(Name))
           end,
    try
        maps:merge(Base, maps:from_list([{Key, probe(Name, M, F, A)} || {Key, M, F, A} <- Probes]))
    catch throw:unreachable -> Base#{status => unreachable}
    end;
describe(N) -> N.

%% How this node is connected to `Name': its host (as the connection knows it) and whether
%% the node is hidden.
connection(Name) ->
    Host = case Name =/= node() andalso net_kernel:node_info(Name, address) of
               {ok, Address} when is_tuple(Address), tuple_size(Address) >= 3 ->
                   case element(3, Address) of  % #net_address{address, host, ...}
                       H when is_list(H) -> #{host => unicode:characters_to_binary(H)};
                       _ -> #{}
                   end;
               _ -> #{}
           end,
    Type = case Name =/= node() andalso net_kernel:node_info(Name, type) of
               {ok, T} when T =:= normal; T =:= hidden -> #{connection => T};
               _ -> #{}
           end,
    maps:merge(Host, Type).

%% A node that answers no BIF: what it says of itself through `beambridge_node:info/0', if
%% it exposes that; else only its name and connection (kind `other').
described_by_itself(Name, Facts) ->
    Keys = [<<"os_pid">>, <<"role">>, <<"host">>, <<"exposes">>, <<"rpc_calls">>, <<"rpc_errors">>,
            <<"rpc_rate">>, <<"connections">>, <<"messages_in">>, <<"messages_out">>,
            <<"bytes_in">>, <<"bytes_out">>, <<"python">>, <<"version">>, <<"memory_bytes">>],
    case rpc:call(Name, beambridge_node, info, [], ?RPC_MS) of
        Info when is_map(Info) ->
            Said = maps:with(Keys, bbc_json:to_json(Info)),
            %% Its own role (web worker, receiver...) is shown beside ours (peer).
            Own = maps:fold(fun(<<"role">>, V, Acc) -> Acc#{node_role => V};
                               (K, V, Acc) -> Acc#{binary_to_atom(K) => V}
                            end, #{}, Said),
            maps:merge(Facts#{kind => python}, Own);
        _ -> Facts#{kind => other}
    end.

probe(Name, M, F, A) ->
    Value = case Name =:= node() of
                true -> apply(M, F, A);
                false -> rpc:call(Name, M, F, A, ?RPC_MS)
            end,
    case Value of
        {badrpc, _} -> throw(unreachable);
        {ok, [[Proto | _] | _]} when F =:= get_argument -> list_to_binary(Proto);
        error when F =:= get_argument -> <<"inet_tcp">>;  % the default carrier
        Pid when F =:= getpid -> list_to_integer(Pid);
        Nodes when F =:= nodes -> Nodes;
        Release when is_list(Release) -> list_to_binary(Release);
        Other -> Other
    end.
