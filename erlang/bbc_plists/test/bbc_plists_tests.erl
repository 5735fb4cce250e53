%%% EUnit tests for bbc_plists: results against the lists module, errors, timeouts, no
%%% leftovers, and (when this node is distributed) real peer nodes: code push and node death.
-module(bbc_plists_tests).

-include_lib("eunit/include/eunit.hrl").

-export([square/1, slow_square/1, where/1, halt_on/2]).

square(X) -> X * X.

slow_square(X) -> timer:sleep(20), X * X.

where(X) -> {X, node()}.

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
    ?assertError({bbc_plists, timeout}, bbc_plists:map(Slow, items(), [{timeout, 100}, 1])),
    assert_no_leftovers(Before).

killed_caller_takes_workers_down_test() ->
    Before = erlang:system_info(process_count),
    Slow = fun(X) -> timer:sleep(5000), X end,
    Caller = spawn(fun() -> bbc_plists:map(Slow, items(), [1, {processes, 4}]) end),
    ?assert(wait_until(fun() -> erlang:system_info(process_count) > Before + 3 end, 100)),
    exit(Caller, kill),
    assert_no_leftovers(Before).

bad_option_test() ->
    ?assertError({bbc_plists, bad_option, {processes, 0}},
                 bbc_plists:map(fun square/1, [1], {processes, 0})).

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
              fun remote_raise_carries_remote_stack/1]}
    end.

start_peers() ->
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Suffix = integer_to_list(erlang:unique_integer([positive])) ++ "_" ++ os:getpid(),
    Start = fun(I) ->
                    Name = list_to_atom("bbcpeer" ++ integer_to_list(I) ++ "_" ++ Suffix),
                    %% No -pa: the job code and bbc_plists must be pushed by the library.
                    {ok, Pid, Node} = peer:start(#{name => Name, host => "127.0.0.1",
                                                   longnames => true, exec => Erl,
                                                   args => ["-setcookie", atom_to_list(erlang:get_cookie()),
                                                            "-connect_all", "false",
                                                            "-kernel", "inet_dist_use_interface",
                                                            "{127,0,0,1}"]}),
                    {Pid, Node}
            end,
    [Start(1), Start(2)].

stop_peers(Peers) ->
    [catch peer:stop(Pid) || {Pid, _} <- Peers],
    ok.

remote_map_and_code_push([{_, N1}, {_, N2}]) ->
    fun() ->
            ?assertEqual(false, rpc:call(N1, code, is_loaded, [?MODULE])),
            Result = bbc_plists:map(fun where/1, items(), [{nodes, [{N1, 2}, {N2, 2}]}, 5]),
            ?assertEqual(items(), [X || {X, _} <- Result]),
            Used = lists:usort([N || {_, N} <- Result]),
            ?assertEqual(lists:sort([N1, N2]), Used),
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
