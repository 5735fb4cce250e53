%%% @doc The worker nodes: starts and supervises N local ones (OTP's peer module), joins
%%% the ones named in the config, and reports each node's load.
%%%
%%% A local worker that dies is started again after a short delay; a configured node that
%%% goes away is reconnected periodically. Jobs use whatever workers are up when they
%%% start; bbc_plists reruns the chunks of a node that dies mid-job on the others.
-module(bbc_nodes).
-behaviour(gen_server).

-export([start_link/0, workers/0, info/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(RESTART_MS, 1000).
-define(RECONNECT_MS, 2000).
-define(RPC_MS, 2000).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The worker nodes that are up now.
workers() -> gen_server:call(?MODULE, workers).

%% @doc One map per node, the service node first: name, role, status and load figures.
info() ->
    Nodes = gen_server:call(?MODULE, nodes),
    Self = #{name => node(), role => service, status => up},
    [describe(N) || N <- [Self | Nodes]].

%%% ------------------------------------------------------------------ server

init([]) ->
    process_flag(trap_exit, true),
    ok = net_kernel:monitor_nodes(true),
    Count = bbc_config:get(local_nodes),
    Count > 0 andalso node() =:= nonode@nohost andalso
        logger:error("bbc_nodes: local worker nodes need a distributed service node (-name)"),
    Local = maps:from_list([{local_name(I), #{role => local, status => down, peer => undefined}}
                            || I <- lists:seq(1, Count), node() =/= nonode@nohost]),
    Remote = maps:from_list([{binary_to_atom(N), #{role => remote, status => down}}
                             || N <- bbc_config:get(nodes)]),
    S0 = maps:merge(Remote, Local),
    %% Start local workers now, so the service answers with its workers in place.
    S1 = maps:map(fun(Name, #{role := local} = N) -> start_local(Name, N);
                     (Name, #{role := remote} = N) -> connect(Name, N)
                  end, S0),
    {ok, S1}.

handle_call(workers, _From, S) ->
    {reply, [N || {N, #{status := up}} <- maps:to_list(S)], S};
handle_call(nodes, _From, S) ->
    {reply, [#{name => N, role => R, status => St} || {N, #{role := R, status := St}} <- lists:sort(maps:to_list(S))], S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

handle_cast(_Msg, S) -> {noreply, S}.

handle_info({'EXIT', Pid, Reason}, S) ->
    case [N || {N, #{peer := P}} <- maps:to_list(S), P =:= Pid] of
        [Name] ->
            logger:warning("bbc_nodes: worker ~p stopped (~0p); restarting", [Name, Reason]),
            erlang:send_after(?RESTART_MS, self(), {restart, Name}),
            {noreply, S#{Name := (maps:get(Name, S))#{status := down, peer := undefined}}};
        [] -> {noreply, S}
    end;
handle_info({nodedown, Name}, S) when is_map_key(Name, S) ->
    Node = maps:get(Name, S),
    case Node of
        #{role := remote} -> erlang:send_after(?RECONNECT_MS, self(), {restart, Name});
        _ -> ok
    end,
    {noreply, S#{Name := Node#{status := down}}};
handle_info({restart, Name}, S) when is_map_key(Name, S) ->
    case maps:get(Name, S) of
        #{status := up} -> {noreply, S};
        #{role := local, peer := undefined} = N -> {noreply, S#{Name := start_local(Name, N)}};
        #{role := remote} = N -> {noreply, S#{Name := connect(Name, N)}};
        _ -> {noreply, S}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

terminate(_Reason, S) ->
    [catch peer:stop(P) || {_, #{peer := P}} <- maps:to_list(S), is_pid(P)],
    ok.

%%% ------------------------------------------------------------------ internals

local_name(I) ->
    [Base, Host] = string:split(atom_to_list(node()), "@"),
    list_to_atom(Base ++ "_w" ++ integer_to_list(I) ++ "@" ++ Host).

start_local(Name, Node) ->
    [Base, Host] = string:split(atom_to_list(Name), "@"),
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    %% Same code path as ours (minus OTP's own), same cookie, loopback distribution.
    Paths = [P || P <- code:get_path(), not lists:prefix(code:root_dir(), P), P =/= "."],
    {CookieArgs, Env} = cookie_source(),
    Args = CookieArgs ++ ["-connect_all", "false",
                          "-kernel", "inet_dist_use_interface", inet_interface(), "-pa" | Paths],
    Opts = #{name => list_to_atom(Base), host => Host, longnames => net_kernel:longnames(),
             exec => Erl, args => Args, env => Env, wait_boot => 30000},
    try peer:start_link(Opts) of
        {ok, Pid, Name} ->
            logger:info("bbc_nodes: worker ~p up", [Name]),
            Node#{status => up, peer => Pid};
        Other ->
            logger:error("bbc_nodes: worker ~p failed to start: ~0p", [Name, Other]),
            erlang:send_after(?RESTART_MS * 5, self(), {restart, Name}),
            Node#{status => down, peer => undefined}
    catch Class:Why ->
            logger:error("bbc_nodes: worker ~p failed to start: ~0p:~0p", [Name, Class, Why]),
            erlang:send_after(?RESTART_MS * 5, self(), {restart, Name}),
            Node#{status => down, peer => undefined}
    end.

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

connect(Name, Node) ->
    case net_kernel:connect_node(Name) of
        true -> Node#{status => up};
        _ ->
            erlang:send_after(?RECONNECT_MS, self(), {restart, Name}),
            Node#{status => down}
    end.

describe(#{name := Name, status := up} = N) ->
    %% Plain BIF calls only: a joined node need not have our modules.
    Probes = [{os_pid, os, getpid, []},
              {otp_release, erlang, system_info, [otp_release]},
              {schedulers, erlang, system_info, [schedulers_online]},
              {run_queue, erlang, statistics, [run_queue]},
              {process_count, erlang, system_info, [process_count]},
              {memory_bytes, erlang, memory, [total]}],
    try
        maps:merge(N, maps:from_list([{Key, probe(Name, M, F, A)} || {Key, M, F, A} <- Probes]))
    catch throw:unreachable -> N#{status => unreachable}
    end;
describe(N) -> N.

probe(Name, M, F, A) ->
    Value = case Name =:= node() of
                true -> apply(M, F, A);
                false -> rpc:call(Name, M, F, A, ?RPC_MS)
            end,
    case Value of
        {badrpc, _} -> throw(unreachable);
        Pid when F =:= getpid -> list_to_integer(Pid);
        Release when is_list(Release) -> list_to_binary(Release);
        Other -> Other
    end.
