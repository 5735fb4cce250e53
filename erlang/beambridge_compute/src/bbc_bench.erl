%%% @doc Benchmark helpers, callable as jobs when a service allows this module
%%% (bench/compute_bench.py does): a constant MochiWeb handler to compare the service's
%%% request rate with, the distributed map's per-item overhead, and the speedup of a
%%% CPU-bound map with one and two worker nodes. Timings are measured here, in Erlang,
%%% so HTTP and JSON are left out of them.
-module(bbc_bench).
-export([start_const/0, overhead/1, speedup/2]).

%% @doc Start (once) a MochiWeb server on a free loopback port that answers every request
%% with the same small JSON; returns its port.
-spec start_const() -> inet:port_number().
start_const() ->
    case whereis(bbc_bench_const) of
        undefined ->
            %% The job process exits when it answers; the server must not be linked to it.
            Caller = self(),
            Holder = spawn(fun() ->
                                   Loop = fun(Req) ->
                                                  mochiweb_request:respond(
                                                    {200, [{"Content-Type", "application/json"}],
                                                     <<"{\"status\":\"done\",\"result\":\"ok\"}">>}, Req)
                                          end,
                                   Started = mochiweb_http:start_link(
                                               [{name, bbc_bench_const}, {ip, {127, 0, 0, 1}}, {port, 0},
                                                {loop, Loop}, {acceptor_pool_size, 32}]),
                                   Caller ! {self(), Started},
                                   receive stop -> ok end
                           end),
            receive {Holder, {ok, _}} -> ok end;
        _ -> ok
    end,
    mochiweb_socket_server:get(bbc_bench_const, port).

%% @doc Microseconds for `N' trivial items through lists:map, bbc_plists locally, and
%% bbc_plists over every worker node; best of three each.
-spec overhead(pos_integer()) -> #{items := pos_integer(), workers := non_neg_integer(),
                                     micros := #{atom() => non_neg_integer()}}.
overhead(N) when is_integer(N), N > 0, N =< 10000000 ->
    Items = lists:seq(1, N),
    F = fun bbc_sample_jobs:square/1,
    Workers = bbc_nodes:workers(),
    Runs = [{lists_map, fun() -> lists:map(F, Items) end},
            {plists_local, fun() -> bbc_plists:map(F, Items, {processes, schedulers}) end},
            {plists_local_chunk1000, fun() -> bbc_plists:map(F, Items, [{processes, schedulers}, 1000]) end}]
        ++ [{plists_nodes, fun() -> bbc_plists:map(F, Items, {nodes, Workers}) end} || Workers =/= []],
    #{items => N, workers => length(Workers),
      micros => maps:from_list([{Name, best_of(3, Fun)} || {Name, Fun} <- Runs])}.

%% @doc Microseconds for mapping `bbc_sample_jobs:burn(Rounds)' over `Items' items:
%% sequentially (lists:map on a worker), on one worker (one process), on two workers (one process each), and
%% on two workers with a process per scheduler.
-spec speedup(pos_integer(), pos_integer()) ->
          #{items := pos_integer(), rounds := pos_integer(), workers := non_neg_integer(),
            micros := #{atom() => non_neg_integer()}}.
speedup(Items, Rounds) when is_integer(Items), Items > 0, is_integer(Rounds), Rounds > 0 ->
    List = lists:duplicate(Items, Rounds),
    F = fun bbc_sample_jobs:burn/1,
    Workers = bbc_nodes:workers(),
    %% The reference runs on a worker too, so every row uses the same kind of node.
    %% (one chunk holding every item: one process runs lists:map over all of them).
    Runs = [{sequential, fun() -> bbc_plists:map(F, List, [Items, {nodes, [{hd(Workers), 1}]}]) end}
            || length(Workers) >= 1]
        ++ [{one_node_one_process, fun() -> bbc_plists:map(F, List, [1, {nodes, [{hd(Workers), 1}]}]) end}
            || length(Workers) >= 1]
        ++ [{two_nodes_one_process_each,
             fun() -> bbc_plists:map(F, List, [1, {nodes, [{W, 1} || W <- lists:sublist(Workers, 2)]}]) end}
            || length(Workers) >= 2]
        ++ [{two_nodes_all_schedulers,
             fun() -> bbc_plists:map(F, List, [1, {nodes, lists:sublist(Workers, 2)}]) end}
            || length(Workers) >= 2],
    #{items => Items, rounds => Rounds, workers => length(Workers),
      micros => maps:from_list([{Name, best_of(2, Fun)} || {Name, Fun} <- Runs])}.

best_of(Times, Fun) ->
    _ = Fun(),  % warm-up: code loading, first connections
    lists:min([element(1, timer:tc(Fun)) || _ <- lists:seq(1, Times)]).
