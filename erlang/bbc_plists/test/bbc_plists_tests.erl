%%% EUnit tests for bbc_plists: results against the lists module, errors, timeouts, no
%%% leftovers, and (when this node is distributed) real peer nodes: code push and node death.
-module(bbc_plists_tests).

-include_lib("eunit/include/eunit.hrl").

-export([square/1, slow_square/1, where/1, halt_on/2, tagged_sleep/2, slow_on/3, count_tagged/0]).

-define(TAG, bbc_plists_test_job).

square(X) -> X * X.

slow_square(X) -> timer:sleep(20), X * X.

where(X) -> {X, node()}.

%% Marks its process as one of the job's workers, then sleeps.
tagged_sleep(Ms, X) -> put(?TAG, true), timer:sleep(Ms), X.

%% Slow (`Ms' per item) on `Slow', fast elsewhere; says where it ran.
slow_on(Slow, Ms, X) ->
    put(?TAG, true),
    case node() of
        Slow -> timer:sleep(Ms);
        _ -> timer:sleep(1)
    end,
    {X, node()}.

%% The job's worker processes on the peer behind `Peer' (none before the code is there).
tagged_on(Peer) ->
    try peer:call(Peer, ?MODULE, count_tagged, [])
    catch error:undef -> 0
    end.

%% The job's worker processes on this node.
count_tagged() ->
    length([P || P <- processes(), {dictionary, D} <- [process_info(P, dictionary)],
                 proplists:get_value(?TAG, D) =:= true]).

%% Halts the node it runs on when that node is `Victim' (simulates a crash mid-job).
halt_on(Victim, X) ->
    case node() of
        Victim -> timer:sleep(50), erlang:halt(137);
        _ -> timer:sleep(5), X * X
    end.

items() -> lists:seq(1, 103).

map_matches_lists_test_() ->
    [?_assertEqual(lists:map(fun square/1, items()),
                   bbc_plists:map(fun square/1, items(), Malt))
     || Malt <- [[], 1, 7, 1000, [{processes, 1}], [{processes, 3}, 5],
                 [{processes, schedulers}, {chunk, 2}], {timeout, 5000}]].

order_kept_with_uneven_work_test() ->
    Fun = fun(X) -> timer:sleep(rand:uniform(5)), X end,
    ?assertEqual(items(), bbc_plists:map(Fun, items(), [1, {processes, 8}])).

empty_list_test() ->
    ?assertEqual([], bbc_plists:map(fun square/1, [])),
    ?assertEqual(0, bbc_plists:fold(fun erlang:'+'/2, 0, [])),
    ?assertEqual([], bbc_plists:sort([])),
    ?assertEqual(#{}, bbc_plists:mapreduce(fun(X) -> [{X, 1}] end, [])).

filter_test() ->
    Odd = fun(X) -> X rem 2 =:= 1 end,
    ?assertEqual(lists:filter(Odd, items()), bbc_plists:filter(Odd, items(), [3, {processes, 2}])).

fold_with_fuse_test() ->
    Sum = lists:sum(items()),
    ?assertEqual(Sum, bbc_plists:fold(fun erlang:'+'/2, 0, items(), 10)),
    %% Fold into a list per chunk, fuse by appending: order is kept.
    Collect = fun(X, Acc) -> Acc ++ [X] end,
    Fuse = fun(A, B) -> A ++ B end,
    ?assertEqual(items(), bbc_plists:fold(Collect, Fuse, [], items(), [4, {processes, 3}])).

foreach_test() ->
    Tab = ets:new(bbc_foreach, [public, set]),
    ok = bbc_plists:foreach(fun(X) -> ets:insert(Tab, {X}) end, items(), [5, {processes, 4}]),
    ?assertEqual(length(items()), ets:info(Tab, size)),
    ets:delete(Tab).

sort_test() ->
    Shuffled = [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- items()])],
    ?assertEqual(items(), bbc_plists:sort(Shuffled)),
    Desc = fun(A, B) -> A >= B end,
    ?assertEqual(lists:reverse(items()), bbc_plists:sort(Desc, Shuffled, [7, {processes, 3}])),
    %% Stable, like lists:sort/2.
    Pairs = [{X rem 5, X} || X <- items()],
    ByKey = fun({A, _}, {B, _}) -> A =< B end,
    ?assertEqual(lists:sort(ByKey, Pairs), bbc_plists:sort(ByKey, Pairs, 6)).

mapreduce_test() ->
    Words = [<<"a">>, <<"b">>, <<"a">>, <<"c">>, <<"a">>, <<"b">>],
    ToPair = fun(W) -> [{W, 1}] end,
    ?assertEqual(#{<<"a">> => [1, 1, 1], <<"b">> => [1, 1], <<"c">> => [1]},
                 bbc_plists:mapreduce(ToPair, Words, 2)),
    %% Values keep input order.
    ?assertEqual(#{odd => [1, 3, 5, 7], even => [2, 4, 6]},
                 bbc_plists:mapreduce(fun(X) when X rem 2 =:= 0 -> #{even => X};
                                         (X) -> [{odd, X}] end, lists:seq(1, 7), 2)),
    Counted = bbc_plists:mapreduce(ToPair, Words, #{}, fun(S, K, V) ->
                                                                maps:update_with(K, fun(O) -> O + V end, V, S)
                                                        end, [1]),
    ?assertEqual(#{<<"a">> => 3, <<"b">> => 2, <<"c">> => 1}, Counted),
    Sum = fun(_K, Vs) -> lists:sum(Vs) end,
    ?assertEqual(#{<<"a">> => 3, <<"b">> => 2, <<"c">> => 1},
                 bbc_plists:mapreduce_combine(ToPair, Sum, Words, [1, {processes, 3}])).

worker_raise_fails_at_once_without_leftovers_test() ->
    Before = erlang:system_info(process_count),
    Fun = fun(1) -> erlang:error(boom);
             (X) -> timer:sleep(5000), X end,
    T0 = erlang:monotonic_time(millisecond),
    Caught = try bbc_plists:map(Fun, items(), [1, {processes, 4}])
             catch Class:Reason:Stack -> {Class, Reason, Stack}
             end,
    ?assertMatch({error, boom, [_ | _]}, Caught),
    {error, boom, [{?MODULE, _, _, _} | _]} = Caught,
    ?assert(erlang:monotonic_time(millisecond) - T0 < 4000),  % the other items sleep 5 s
    assert_no_leftovers(Before).

throw_and_exit_keep_their_class_test() ->
    ?assertEqual({throw, oops}, try bbc_plists:map(fun(_) -> throw(oops) end, [1])
                                catch C:R -> {C, R} end),
    ?assertEqual({exit, gone}, try bbc_plists:map(fun(_) -> exit(gone) end, [1])
                               catch C:R -> {C, R} end).

timeout_test() ->
    Before = erlang:system_info(process_count),
    Slow = fun(X) -> timer:sleep(3000), X end,
    ?assertError({bbc_plists, timeout, #{timeout := 100, done := 0, total := 103}},
                 bbc_plists:map(Slow, items(), [{timeout, 100}, 1])),
    assert_no_leftovers(Before).

killed_caller_takes_workers_down_test() ->
    Before = erlang:system_info(process_count),
    Slow = fun(X) -> timer:sleep(5000), X end,
    Caller = spawn(fun() -> bbc_plists:map(Slow, items(), [1, {processes, 4}]) end),
    ?assert(wait_until(fun() -> erlang:system_info(process_count) > Before + 3 end, 100)),
    exit(Caller, kill),
    assert_no_leftovers(Before).

bad_option_test() ->
    ?assertError({bbc_plists, bad_option, #{option := {processes, 0}}},
                 bbc_plists:map(fun square/1, [1], {processes, 0})),
    ?assertError({bbc_plists, bad_option, #{option := {nodes, "x"}}},
                 bbc_plists:map(fun square/1, [1], {nodes, ["x"]})),
    ?assertError({bbc_plists, bad_option, #{option := {speculate, maybe}}},
                 bbc_plists:map(fun square/1, [], {speculate, maybe})).

%% The library's own failures all look alike: error:{bbc_plists, Reason, #{...}}; a local
%% job whose last process is killed says so (it used to be no_live_slots [nonode@nohost]
%% or exit:worker_exit, depending on whether the node was distributed).
failure_shape_test_() ->
    {timeout, 30, fun() ->
        Before = erlang:system_info(process_count),
        Self = self(),
        Fun = fun(X) -> Self ! {worker, self()}, timer:sleep(5000), X end,
        Killer = spawn(fun() -> receive {go, Pid} -> exit(Pid, kill) end end),
        Job = spawn_monitor(fun() ->
                                    exit({caught, try bbc_plists:map(Fun, [1, 2], [{processes, 1}, 1])
                                                  catch C:R -> {C, R} end})
                            end),
        receive {worker, W} -> Killer ! {go, W} end,
        {_, MRef} = Job,
        Caught = receive {'DOWN', MRef, process, _, {caught, Got}} -> Got end,
        ?assertMatch({error, {bbc_plists, worker_killed, #{reason := killed, chunk := 1}}}, Caught),
        {error, {bbc_plists, worker_killed, #{node := Where}}} = Caught,
        ?assertEqual(node(), Where),
        flush_workers(),
        assert_no_leftovers(Before),
        ?assertMatch({error, {bbc_plists, no_live_slots, #{nodes := #{'nobody@127.0.0.1' := _}}}},
                     try bbc_plists:map(fun square/1, [1], {nodes, ['nobody@127.0.0.1']})
                     catch C:R -> {C, R} end),
        ?assertMatch({error, {bbc_plists, timeout, #{timeout := 0}}},
                     try bbc_plists:map(fun slow_square/1, [1], {timeout, 0}) catch C:R -> {C, R} end),
        %% A worker's own exception keeps its class and stack (see the tests above).
        ok
     end}.

flush_workers() ->
    receive {worker, _} -> flush_workers() after 0 -> ok end.

%% Process count back to where it was (bounded wait) and an empty mailbox.
assert_no_leftovers(Before) ->
    wait_until(fun() -> erlang:system_info(process_count) =< Before end, 100),
    ?assert(erlang:system_info(process_count) =< Before),
    ?assertEqual({messages, []}, process_info(self(), messages)).

wait_until(Pred, 0) -> Pred();
wait_until(Pred, N) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(20), wait_until(Pred, N - 1)
    end.

%%% ---------------------------------------------------------------- distributed

distributed_test_() ->
    case node() of
        nonode@nohost -> [];
        _ ->
            {foreach, fun start_peers/0, fun stop_peers/1,
             [fun remote_map_and_code_push/1,
              fun node_death_reruns_chunks/1,
              fun remote_raise_carries_remote_stack/1,
              fun partition_leaves_nothing_behind/1,
              fun hung_node_bounded_by_deadline/1,
              fun slow_node_chunk_rerun_speculatively/1,
              fun code_check_cached_per_connection/1]}
    end.

start_peers() ->
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Suffix = integer_to_list(erlang:unique_integer([positive])) ++ "_" ++ os:getpid(),
    Start = fun(I) ->
                    Name = list_to_atom("bbcpeer" ++ integer_to_list(I) ++ "_" ++ Suffix),
                    %% No -pa: the job code and bbc_plists must be pushed by the library.
                    %% Controlled over stdio, so that cutting the distribution connection
                    %% (the partition tests) does not stop the peer.
                    {ok, Pid, Node} = peer:start(#{name => Name, host => "127.0.0.1",
                                                   longnames => true, exec => Erl,
                                                   connection => standard_io,
                                                   args => ["-setcookie", atom_to_list(erlang:get_cookie()),
                                                            "-connect_all", "false",
                                                            "-kernel", "inet_dist_use_interface",
                                                            "{127,0,0,1}"]}),
                    true = net_kernel:connect_node(Node),
                    {Pid, Node}
            end,
    [Start(1), Start(2)].

stop_peers(Peers) ->
    [catch peer:stop(Pid) || {Pid, _} <- Peers],
    ok.

remote_map_and_code_push([{_, N1}, {_, N2}]) ->
    fun() ->
            ?assertEqual(false, rpc:call(N1, code, is_loaded, [?MODULE])),
            %% Nodes join as they are prepared: items slow enough for both to take part.
            Slow = fun(X) -> timer:sleep(10), ?MODULE:where(X) end,
            Result = bbc_plists:map(Slow, items(), [{nodes, [{N1, 2}, {N2, 2}]}, 5]),
            ?assertEqual(items(), [X || {X, _} <- Result]),
            Used = lists:usort([N || {_, N} <- Result]),
            ?assertEqual(lists:sort([N1, N2]), Used),
            %% Prepared (and cached) now: both are there from the start (items slow enough
            %% that one node cannot take them all before the other asks, on a loaded machine).
            Again = bbc_plists:map(Slow, items(), [{nodes, [{N1, 2}, {N2, 2}]}, 5]),
            ?assertEqual(lists:sort([N1, N2]), lists:usort([N || {_, N} <- Again])),
            ?assertMatch({file, _}, rpc:call(N1, code, is_loaded, [?MODULE])),
            ?assertMatch({file, _}, rpc:call(N1, code, is_loaded, [bbc_plists])),
            %% schedulers form and a local process alongside.
            ?assertEqual(lists:map(fun square/1, items()),
                         bbc_plists:map(fun square/1, items(), [{nodes, [N1, {N2, schedulers}]},
                                                               {processes, 1}, 3]))
    end.

node_death_reruns_chunks([{_, N1}, {_, N2}]) ->
    fun() ->
            Fun = fun(X) -> ?MODULE:halt_on(N1, X) end,
            Result = bbc_plists:map(Fun, items(), [{nodes, [{N1, 2}, {N2, 2}]}, 4, {timeout, 30000}]),
            ?assertEqual(lists:map(fun square/1, items()), Result),
            ?assertEqual(pang, net_adm:ping(N1))
    end.

remote_raise_carries_remote_stack([{_, N1}, _]) ->
    fun() ->
            Before = erlang:system_info(process_count),
            Fun = fun(7) -> erlang:error({bad_item, 7});
                     (X) -> timer:sleep(2000), X end,
            {Class, Reason, Stack} = try bbc_plists:map(Fun, items(), [{nodes, [{N1, 4}]}, 1])
                                     catch C:R:S -> {C, R, S}
                                     end,
            ?assertEqual({error, {bad_item, 7}}, {Class, Reason}),
            ?assertMatch([{?MODULE, _, _, _} | _], Stack),
            assert_no_leftovers(Before),
            %% The remote workers were killed too (bounded wait: the kill crosses the wire).
            Busy = fun() ->
                           [P || P <- rpc:call(N1, erlang, processes, []),
                                 {current_function, {timer, sleep, 1}} =:=
                                     rpc:call(N1, erlang, process_info, [P, current_function])]
                   end,
            wait_until(fun() -> Busy() =:= [] end, 100),
            ?assertEqual([], Busy())
    end.

%% A partition mid-job: the chunks on the cut-off node run again here, and the workers
%% there die with the connection (linked, not merely monitored), so once it heals nothing
%% of the job runs twice or is left behind.
partition_leaves_nothing_behind([{P1, N1}, _]) ->
    {timeout, 60, fun() ->
        Items = lists:seq(1, 24),
        Self = self(),
        Fun = fun(X) -> ?MODULE:tagged_sleep(300, X) end,
        {_, MRef} = spawn_monitor(fun() ->
                                          exit({result, catch bbc_plists:map(
                                                                Fun, Items,
                                                                [{nodes, [{N1, 4}]}, {processes, 2}, 2,
                                                                 {timeout, 30000}])})
                                  end),
        Tagged = fun() -> tagged_on(P1) end,
        ?assert(wait_until(fun() -> Tagged() =:= 4 end, 150)),
        true = erlang:disconnect_node(N1),
        ?assert(wait_until(fun() -> Tagged() =:= 0 end, 100)),
        ?assertEqual(true, net_kernel:connect_node(N1)),
        Result = receive {'DOWN', MRef, process, _, {result, R}} -> R
                 after 30000 -> no_result
                 end,
        ?assertEqual(Items, Result),
        %% Dead for this job: nothing more went there after the partition healed.
        ?assertEqual(0, Tagged()),
        _ = Self
     end}.

%% A node whose OS process is stopped: the job is bounded by its own deadline, whether the
%% node is new to us (its preparation is cut short) or was prepared before (its chunks are
%% re-run on the live node); a job that does not name it does not notice.
hung_node_bounded_by_deadline([{P1, N1}, {_, N2}]) ->
    {timeout, 60, fun() ->
        Items = lists:seq(1, 20),
        Fun = fun(X) -> ?MODULE:tagged_sleep(5, X) end,
        ?assertEqual(Items, bbc_plists:map(Fun, Items, {nodes, [N1, N2]})),   % both prepared
        OsPid = peer:call(P1, os, getpid, []),
        _ = os:cmd("kill -STOP " ++ OsPid),
        try
            Timed = fun(Malt) ->
                            T0 = erlang:monotonic_time(millisecond),
                            R = try bbc_plists:map(Fun, Items, Malt) catch C:E -> {C, E} end,
                            {erlang:monotonic_time(millisecond) - T0, R}
                    end,
            Ok = fun({error, {bbc_plists, timeout, _}}) -> true;
                    (R) -> R =:= Items
                 end,
            %% Prepared before: chunks sent there never start; copies run on N2.
            {Ms1, R1} = Timed([{nodes, [N1, N2]}, {timeout, 500}, 2]),
            ?assert(Ok(R1)),
            ?assert(Ms1 < 3000),
            %% Unknown (cache dropped): its preparation is bounded by the deadline.
            ok = bbc_plists:forget_node(N1),
            {Ms2, R2} = Timed([{nodes, [N1, N2]}, {timeout, 500}, 2]),
            ?assert(Ok(R2)),
            ?assert(Ms2 < 3000),
            {Ms3, R3} = Timed([{nodes, [N1]}, {timeout, 500}]),
            ?assertMatch({error, {bbc_plists, timeout, #{preparing := [N1]}}}, R3),
            ?assert(Ms3 < 3000),
            %% Without the hung node: unaffected.
            ?assertEqual(Items, bbc_plists:map(Fun, Items, {nodes, [N2]})),
            ?assertEqual(Items, bbc_plists:map(Fun, Items, [{processes, 2}, 3]))
        after
            os:cmd("kill -CONT " ++ OsPid)
        end,
        %% What was sent to it while stopped was abandoned: nothing runs there afterwards.
        ?assert(wait_until(fun() -> tagged_on(P1) =:= 0 end, 100))
     end}.

%% One node far slower than the other: when the queue runs dry, the idle node runs a
%% copy of the chunk still running on the slow one; the first result wins, the loser is
%% killed, and the answer is complete, in order and without duplicates.
slow_node_chunk_rerun_speculatively([{_, N1}, {_, N2}]) ->
    {timeout, 60, fun() ->
        Items = lists:seq(1, 40),
        Fun = fun(X) -> ?MODULE:slow_on(N1, 3000, X) end,
        Result = bbc_plists:map(Fun, Items, [{nodes, [{N1, 1}, {N2, 1}]}, 4]),
        ?assertEqual(Items, [X || {X, _} <- Result]),
        %% N1's first chunk (3 s per item) lost the race to its copy on N2.
        ?assertEqual([N2], lists:usort([N || {_, N} <- Result])),
        ?assert(wait_until(fun() -> rpc:call(N1, ?MODULE, count_tagged, []) =:= 0 end, 100)),
        %% The default chunking (sized as it goes, small tail) takes the same path.
        Default = bbc_plists:map(Fun, Items, {nodes, [{N1, 1}, {N2, 1}]}),
        ?assertEqual(Items, [X || {X, _} <- Default]),
        ?assertEqual([N2], lists:usort([N || {_, N} <- Default])),
        %% Without speculation the slow chunk's own result is used.
        Plain = bbc_plists:map(fun(X) -> ?MODULE:slow_on(N1, 200, X) end, Items,
                               [{nodes, [{N1, 1}, {N2, 1}]}, 2, {speculate, false}]),
        ?assertEqual(Items, [X || {X, _} <- Plain]),
        ?assert(lists:member(N1, [N || {_, N} <- Plain]))
     end}.

%% The code check is cached per node and connection: a second job trusts it (so code
%% removed there behind our back breaks it until forget_node/1), a new connection or
%% forget_node/1 makes the next job check again.
code_check_cached_per_connection([{P1, N1}, _]) ->
    {timeout, 60, fun() ->
        Items = lists:seq(1, 10),
        ?assertEqual([{X, N1} || X <- Items], bbc_plists:map(fun where/1, Items, {nodes, [N1]})),
        Unload = fun() ->
                         true = peer:call(P1, code, delete, [?MODULE]),
                         _ = peer:call(P1, code, purge, [?MODULE]),
                         false = peer:call(P1, code, is_loaded, [?MODULE])
                 end,
        Unload(),
        %% (Only when the peer cannot load it from its own path, e.g. the current folder.)
        [?assertMatch({error, undef},
                      try bbc_plists:map(fun where/1, Items, {nodes, [N1]}) catch C:R -> {C, R} end)
         || peer:call(P1, code, which, [?MODULE]) =:= non_existing],
        ok = bbc_plists:forget_node(N1),
        ?assertEqual([{X, N1} || X <- Items], bbc_plists:map(fun where/1, Items, {nodes, [N1]})),
        Unload(),
        true = erlang:disconnect_node(N1),
        ?assertEqual([{X, N1} || X <- Items], bbc_plists:map(fun where/1, Items, {nodes, [N1]}))
     end}.
