%%% @doc Distributed parallel lists, with the plists API.
%%%
%%% Written for beambridge because the packaged plists (ec_plists) hangs with
%%% `{processes, N}' and `{nodes, ...}'. The list is cut into chunks; each chunk runs in
%%% its own process on a "slot" (a local process or a process on a worker node); results
%%% come back in the order of the input.
%%%
%%% Malt (options), a single term or a list of them (type {@type malt()}):
%%% <ul>
%%%  <li>`N' or `{chunk, N}': items per chunk (default: sized as the job runs, see below);</li>
%%%  <li>`{processes, N | schedulers}': local processes;</li>
%%%  <li>`{nodes, [Node | {Node, N} | {Node, schedulers}]}': worker nodes and how many
%%%      processes each runs at once (default: its own scheduler count);</li>
%%%  <li>`{timeout, Ms | infinity}': the whole operation's deadline, node preparation
%%%      included;</li>
%%%  <li>`{progress, fun((DoneItems, TotalItems) -> any())}': called as chunks finish;</li>
%%%  <li>`{speculate, boolean()}': when the queue is empty and a slot is idle, run a copy of
%%%      a chunk still running on another node; the first result wins and the other copy is
%%%      killed (default true, false for foreach, whose funs are run for their effects).</li>
%%% </ul>
%%% With neither `processes' nor `nodes', the work runs locally, one process per scheduler.
%%%
%%% Default chunks are cut as slots ask for work, each `Remaining / (4 * Slots)' items
%%% (at least one), where Slots counts every process on every node known so far: chunks
%%% shrink toward the end, so a slow node holds up the job by a small chunk, not a big one.
%%%
%%% Failure model. Workers are linked to the coordinator: when a worker node is cut off
%%% (its links go `noconnection'), its chunks run again on the surviving slots and its
%%% workers die on their side of the partition, so nothing runs twice once the partition
%%% heals and nothing is left behind (job code that traps exits opts out of this). When a
%%% worker raises, every running chunk is killed and the caller gets the same exception
%%% with the remote stack. Every failure of the library itself is
%%% `error:{bbc_plists, Reason, Details}' (see {@type failure()}), Details a map. All the
%%% bookkeeping happens in a separate coordinator process, which never blocks on a node:
%%% the caller's mailbox only ever sees one reply, and a killed caller takes its workers
%%% down with it.
%%%
%%% Code: the modules that define the funs (and this module) are loaded on worker nodes
%%% that lack them or have another version, so job code need not be installed there.
%%% Nodes are prepared in parallel, each within the job's deadline (at most 5 s); a node
%%% not ready by then is dead for this job. What was checked is cached per node and per
%%% connection (a reconnected or restarted node is checked again), so repeat jobs start
%%% at once.
-module(bbc_plists).

-export([map/2, map/3, filter/2, filter/3, fold/3, fold/4, fold/5,
         foreach/2, foreach/3, sort/1, sort/2, sort/3,
         mapreduce/2, mapreduce/3, mapreduce/5,
         mapreduce_combine/3, mapreduce_combine/4,
         run_chunks/3, ensure_code/2, parse_malt/1, forget_node/1]).

-export_type([malt/0, malt_option/0, opts/0, failure/0]).

%% Workers and preparers answer in their exit reason, so the funs they run never return.
-dialyzer({no_return, [add_slot/4, start_copy/4]}).

-define(PREPARE_MS, 5000).
-define(MAX_ATTEMPTS, 3).
-define(CACHE(Node), {?MODULE, node, Node}).

-type malt() :: malt_option() | [malt_option()].
-type malt_option() :: pos_integer()
                     | {chunk, pos_integer()}
                     | {processes, pos_integer() | schedulers}
                     | {nodes, [node() | {node(), pos_integer() | schedulers}]}
                     | {timeout, non_neg_integer() | infinity}
                     | {progress, fun((non_neg_integer(), non_neg_integer()) -> any())}
                     | {speculate, boolean()}.
%% A normalised Malt, as parse_malt/1 returns it (plus the modules to load on nodes).
-type opts() :: #{chunk := pos_integer() | auto,
                  slots := [{node(), pos_integer() | schedulers}],
                  timeout := non_neg_integer() | infinity,
                  speculate := boolean(),
                  progress => fun((non_neg_integer(), non_neg_integer()) -> any()),
                  modules => [module()]}.
%% What the library itself raises (as `error'): the job ran out of time; no slot is left
%% (every node dead or unreachable, with why); a worker was killed by someone else while its
%% node stayed up; a chunk was lost on too many nodes; the coordinator died; a bad option.
-type failure() :: {bbc_plists, timeout | no_live_slots | worker_killed | spawn_failed |
                                chunk_lost | coordinator_died | bad_option, #{atom() => term()}}.
-type work() :: fun(([term()]) -> term()).

%%% ------------------------------------------------------------------ API

-spec map(fun((A) -> B), [A]) -> [B] when A :: term(), B :: term().
map(Fun, List) -> map(Fun, List, []).

-spec map(fun((A) -> B), [A], malt()) -> [B] when A :: term(), B :: term().
map(Fun, List, Malt) ->
    lists:append(run(fun(Chunk) -> lists:map(Fun, Chunk) end, [Fun], List, Malt)).

-spec filter(fun((A) -> boolean()), [A]) -> [A] when A :: term().
filter(Fun, List) -> filter(Fun, List, []).

-spec filter(fun((A) -> boolean()), [A], malt()) -> [A] when A :: term().
filter(Fun, List, Malt) ->
    lists:append(run(fun(Chunk) -> lists:filter(Fun, Chunk) end, [Fun], List, Malt)).

%% @doc plists' fold/3: `Fun' folds each chunk and also fuses the chunk results.
-spec fold(fun((term(), Acc) -> Acc), Acc, [term()]) -> Acc when Acc :: term().
fold(Fun, InitAcc, List) -> fold(Fun, Fun, InitAcc, List, []).

-spec fold(fun((term(), Acc) -> Acc), Acc, [term()], malt()) -> Acc when Acc :: term().
fold(Fun, InitAcc, List, Malt) -> fold(Fun, Fun, InitAcc, List, Malt).

%% @doc Fold each chunk from `InitAcc' with `Fun(Item, Acc)', then combine the chunk
%% results left to right with `Fuse(AccLeft, AccRight)'. `InitAcc' must be neutral for
%% `Fuse', as every chunk starts from it.
-spec fold(fun((term(), Acc) -> Acc), fun((Acc, Acc) -> Acc), Acc, [term()], malt()) -> Acc
          when Acc :: term().
fold(Fun, Fuse, InitAcc, List, Malt) ->
    case run(fun(Chunk) -> lists:foldl(Fun, InitAcc, Chunk) end, [Fun], List, Malt) of
        [] -> InitAcc;
        [First | Rest] -> lists:foldl(fun(R, Acc) -> Fuse(Acc, R) end, First, Rest)
    end.

-spec foreach(fun((term()) -> term()), [term()]) -> ok.
foreach(Fun, List) -> foreach(Fun, List, []).

%% @doc Without `{speculate, true}', every item runs once (unless its node is lost).
-spec foreach(fun((term()) -> term()), [term()], malt()) -> ok.
foreach(Fun, List, Malt) ->
    _ = run(fun(Chunk) -> lists:foreach(Fun, Chunk) end, [Fun], List,
            [{speculate, false} | as_list(Malt)]),
    ok.

-spec sort([A]) -> [A] when A :: term().
sort(List) -> sort(fun erlang:'=<'/2, List, []).

-spec sort(fun((A, A) -> boolean()), [A]) -> [A] when A :: term().
sort(Fun, List) -> sort(Fun, List, []).

%% @doc Chunks are sorted in parallel, then merged; stable like lists:sort/2.
-spec sort(fun((A, A) -> boolean()), [A], malt()) -> [A] when A :: term().
sort(Fun, List, Malt) ->
    Sorted = run(fun(Chunk) -> lists:sort(Fun, Chunk) end, [Fun], List, Malt),
    merge_all(Fun, Sorted).

%% @doc `MapFun(Item)' returns `[{Key, Value}]' (or a map); the answer is a map from
%% each key to all its values, in input order.
-spec mapreduce(fun((term()) -> [{K, V}] | #{K => V}), [term()]) -> #{K => [V]}
          when K :: term(), V :: term().
mapreduce(MapFun, List) -> mapreduce(MapFun, List, []).

-spec mapreduce(fun((term()) -> [{K, V}] | #{K => V}), [term()], malt()) -> #{K => [V]}
          when K :: term(), V :: term().
mapreduce(MapFun, List, Malt) ->
    Groups = run(fun(Chunk) -> group(MapFun, Chunk) end, [MapFun], List, Malt),
    lists:foldl(fun(G, Acc) ->
                        maps:fold(fun(K, Vs, A) ->
                                          maps:update_with(K, fun(Old) -> Old ++ Vs end, Vs, A)
                                  end, Acc, G)
                end, #{}, Groups).

%% @doc plists' reducing form: after the parallel map, `ReduceFun(State, Key, Value)' is
%% folded over every pair (keys in term order, values in input order) on the caller.
-spec mapreduce(fun((term()) -> [{K, V}] | #{K => V}), [term()], S,
                fun((S, K, V) -> S), malt()) -> S
          when K :: term(), V :: term(), S :: term().
mapreduce(MapFun, List, InitState, ReduceFun, Malt) ->
    Groups = mapreduce(MapFun, List, Malt),
    lists:foldl(fun({K, Vs}, State) ->
                        lists:foldl(fun(V, S) -> ReduceFun(S, K, V) end, State, Vs)
                end, InitState, lists:sort(maps:to_list(Groups))).

-spec mapreduce_combine(fun((term()) -> [{K, V}] | #{K => V}), fun((K, [V]) -> V), [term()]) ->
          #{K => V} when K :: term(), V :: term().
mapreduce_combine(MapFun, ReduceFun, List) -> mapreduce_combine(MapFun, ReduceFun, List, []).

%% @doc Map/reduce with a combiner: `ReduceFun(Key, Values) -> Value' runs on the workers
%% for each chunk and once more on the caller over the chunk results, so it must give the
%% same answer when fed its own outputs (sums, counts, max...). Returns `#{Key => Value}'.
-spec mapreduce_combine(fun((term()) -> [{K, V}] | #{K => V}), fun((K, [V]) -> V), [term()],
                        malt()) -> #{K => V} when K :: term(), V :: term().
mapreduce_combine(MapFun, ReduceFun, List, Malt) ->
    Work = fun(Chunk) ->
                   maps:map(fun(K, Vs) -> ReduceFun(K, Vs) end, group(MapFun, Chunk))
           end,
    Partials = run(Work, [MapFun, ReduceFun], List, Malt),
    Merged = lists:foldl(fun(P, Acc) ->
                                 maps:fold(fun(K, V, A) ->
                                                   maps:update_with(K, fun(Old) -> [V | Old] end,
                                                                    [V], A)
                                           end, Acc, P)
                         end, #{}, Partials),
    maps:map(fun(_K, [V]) -> V;
                (K, Vs) -> ReduceFun(K, lists:reverse(Vs))
             end, Merged).

%%% ------------------------------------------------------------------ engine

run(_Work, _UserFuns, [], Malt) ->
    _ = parse_malt(Malt),
    [];
run(Work, UserFuns, List, Malt) when is_list(List) ->
    Opts = parse_malt(Malt),
    Modules = lists:usort([?MODULE | [fun_module(F) || F <- UserFuns]]),
    start(Work, {list, List, length(List), maps:get(chunk, Opts)}, Opts#{modules => Modules}).

%% @doc Run `Work(Chunk)' for every chunk on the slots in `Opts' (from parse_malt/1, plus
%% `modules' to load on worker nodes) and return the results in chunk order; re-raises the
%% first worker exception with its remote stack. The chunks are used as given.
-spec run_chunks(work(), [[term()]], opts()) -> [term()].
run_chunks(_Work, [], _Opts) ->
    [];
run_chunks(Work, Chunks, Opts) ->
    start(Work, {chunks, Chunks, lists:sum([length(C) || C <- Chunks])}, Opts).

start(Work, Source, Opts) ->
    Caller = self(),
    Ref = make_ref(),
    {Pid, MRef} = spawn_monitor(fun() -> coordinator(Caller, Ref, Work, Source, Opts) end),
    receive
        {Ref, {ok, Results}} ->
            erlang:demonitor(MRef, [flush]),
            Results;
        {Ref, {raise, Class, Reason, Stack}} ->
            erlang:demonitor(MRef, [flush]),
            erlang:raise(Class, Reason, Stack);
        {'DOWN', MRef, process, Pid, Why} ->
            erlang:error({bbc_plists, coordinator_died, #{reason => Why}})
    end.

%% running: Key (a worker pid, or a remote spawn request not yet answered) => {Node, Idx}.
%% inflight: Idx => {Chunk, Keys, StartedMs} for every chunk with a copy running.
%% slots: Node => process count (estimated while the node is being prepared).
%% preparing: preparer monitor => Node.
-record(st, {caller, ref, work, source, next = 1, retry = [], free = [], slots = #{},
             preparing = #{}, dead = #{}, running = #{}, inflight = #{}, results = #{},
             done = 0, total, timeout, deadline, progress, speculate, attempts = #{}}).

coordinator(Caller, Ref, Work, Source, Opts) ->
    process_flag(trap_exit, true),
    _ = erlang:monitor(process, Caller),
    Timeout = maps:get(timeout, Opts),
    Now = erlang:monotonic_time(millisecond),
    Deadline = case Timeout of
                   infinity -> infinity;
                   Ms -> Now + Ms
               end,
    Total = case Source of
                {list, _, Len, _} -> Len;
                {chunks, _, Len} -> Len
            end,
    St0 = #st{caller = Caller, ref = Ref, work = Work, source = Source, total = Total,
              timeout = Timeout, deadline = Deadline,
              progress = maps:get(progress, Opts, undefined),
              speculate = maps:get(speculate, Opts, true)},
    PrepDeadline = case Deadline of
                       infinity -> Now + ?PREPARE_MS;
                       D -> min(D, Now + ?PREPARE_MS)
                   end,
    St = lists:foldl(fun(Slot, S) -> add_slot(Slot, maps:get(modules, Opts, []), PrepDeadline, S)
                     end, St0, maps:get(slots, Opts)),
    Reply = try loop(dispatch(St))
            catch throw:{bbc_reply, R} -> R
            end,
    Caller ! {Ref, Reply}.

%% A local slot is ready at once, so is a node whose code was checked on this connection;
%% any other node is prepared by a process of its own while the job starts elsewhere.
add_slot({Node, Count}, _Modules, _PrepDeadline, St) when Node =:= node() ->
    ready(Node, resolve(Count, erlang:system_info(schedulers_online)), St);
add_slot({Node, Count}, Modules, PrepDeadline, St) ->
    case cached(Node, Modules) of
        {ok, Online} ->
            ready(Node, resolve(Count, Online), St);
        miss ->
            {_, MRef} = spawn_monitor(fun() -> preparer(Node, Count, Modules, PrepDeadline) end),
            Estimate = resolve(Count, erlang:system_info(schedulers_online)),
            St#st{preparing = maps:put(MRef, {Node, Estimate}, St#st.preparing),
                  slots = maps:update_with(Node, fun(C) -> C + Estimate end, Estimate, St#st.slots)}
    end.

resolve(schedulers, Online) -> Online;
resolve(Count, _Online) -> Count.

ready(Node, Count, St) ->
    St#st{free = interleave(lists:duplicate(Count, Node), St#st.free),
          slots = maps:update_with(Node, fun(C) -> C + Count end, Count, St#st.slots)}.

%% Fill every free slot: requeued chunks first, then fresh ones, then (when allowed)
%% copies of chunks still running on other nodes.
dispatch(#st{free = []} = St) ->
    check_live(St);
dispatch(#st{free = Free} = St) ->
    dispatch(Free, [], St).

dispatch([], Unused, St) ->
    check_live(St#st{free = lists:reverse(Unused)});
dispatch([Node | Free], Unused, St) ->
    case next_chunk(St) of
        {Idx, Chunk, St1} ->
            dispatch(Free, Unused, start_copy(Node, Idx, Chunk, St1));
        none when St#st.speculate ->
            case speculation(Node, St) of
                {Idx, Chunk} -> dispatch(Free, Unused, start_copy(Node, Idx, Chunk, St));
                none -> dispatch(Free, [Node | Unused], St)
            end;
        none ->
            dispatch([], lists:reverse(Free, [Node | Unused]), St)
    end.

%% Work is left, nothing runs, no slot is free or coming: give up.
check_live(#st{running = Running, preparing = Preparing, free = []} = St)
  when map_size(Running) =:= 0, map_size(Preparing) =:= 0 ->
    case St#st.retry =/= [] orelse source_left(St#st.source) of
        true -> fail(St, error, {bbc_plists, no_live_slots, #{nodes => St#st.dead}}, []);
        false -> St
    end;
check_live(St) ->
    St.

source_left({list, [], _, _}) -> false;
source_left({chunks, [], _}) -> false;
source_left(_) -> true.

next_chunk(#st{retry = [{Idx, Chunk} | Retry]} = St) ->
    {Idx, Chunk, St#st{retry = Retry}};
next_chunk(#st{source = {list, [], _, _}}) ->
    none;
next_chunk(#st{source = {list, Items, Left, Size}, next = Idx} = St) ->
    N = case Size of
            auto -> max(1, ceil(Left / (4 * max(1, lists:sum(maps:values(St#st.slots))))));
            _ -> Size
        end,
    {Chunk, Rest} = take(N, Items, []),
    {Idx, Chunk, St#st{source = {list, Rest, Left - length(Chunk), Size}, next = Idx + 1}};
next_chunk(#st{source = {chunks, [], _}}) ->
    none;
next_chunk(#st{source = {chunks, [Chunk | Rest], Total}, next = Idx} = St) ->
    {Idx, Chunk, St#st{source = {chunks, Rest, Total}, next = Idx + 1}}.

take(0, Rest, Acc) -> {lists:reverse(Acc), Rest};
take(_, [], Acc) -> {lists:reverse(Acc), []};
take(N, [H | T], Acc) -> take(N - 1, T, [H | Acc]).

%% The chunk running longest with a single copy, on nodes other than `Node'.
speculation(Node, #st{inflight = Inflight, running = Running}) ->
    Candidates = maps:fold(fun(Idx, {Chunk, [Key], Started}, Acc) ->
                                   case maps:get(Key, Running) of
                                       {Node, _} -> Acc;
                                       _ -> [{Started, Idx, Chunk} | Acc]
                                   end;
                              (_, _, Acc) -> Acc
                           end, [], Inflight),
    case lists:sort(Candidates) of
        [] -> none;
        [{_, Idx, Chunk} | _] -> {Idx, Chunk}
    end.

start_copy(Node, Idx, Chunk, St) ->
    Work = St#st.work,
    Key = case Node =:= node() of
              true -> spawn_link(fun() -> work(Work, Chunk) end);
              %% Asynchronous: a hung node cannot block the coordinator.
              false -> erlang:spawn_request(Node, fun() -> work(Work, Chunk) end, [link])
          end,
    Now = erlang:monotonic_time(millisecond),
    Inflight = maps:update_with(Idx, fun({C, Keys, T}) -> {C, [Key | Keys], T} end,
                                {Chunk, [Key], Now}, St#st.inflight),
    St#st{running = maps:put(Key, {Node, Idx}, St#st.running), inflight = Inflight}.

%% A worker's whole answer travels in its exit reason: one message, nothing to clean up.
-spec work(work(), [term()]) -> no_return().
work(Work, Chunk) ->
    Result = try {bbc_done, Work(Chunk)}
             catch Class:Reason:Stack -> {bbc_raised, node(), Class, Reason, Stack}
             end,
    exit(Result).

loop(#st{running = Running, retry = [], free = Free} = St) when map_size(Running) =:= 0 ->
    case source_left(St#st.source) of
        false ->
            kill_preparers(St),
            {ok, [maps:get(I, St#st.results) || I <- lists:seq(1, St#st.next - 1)]};
        true when Free =/= [] ->
            loop(dispatch(St));
        true ->
            wait(St)
    end;
loop(St) ->
    wait(St).

wait(St) ->
    Wait = case St#st.deadline of
               infinity -> infinity;
               D -> max(0, D - erlang:monotonic_time(millisecond))
           end,
    receive
        {'DOWN', _, process, Caller, _} when Caller =:= St#st.caller ->
            kill_all(St),
            exit(normal);
        {'EXIT', Key, Reason} when is_map_key(Key, St#st.running) ->
            loop(dispatch(exited(Key, Reason, St)));
        {spawn_reply, Req, ok, Pid} when is_map_key(Req, St#st.running) ->
            {Where, Running} = maps:take(Req, St#st.running),
            {_, Idx} = Where,
            Inflight = maps:update_with(Idx, fun({C, Keys, T}) -> {C, [Pid | Keys -- [Req]], T} end,
                                        St#st.inflight),
            loop(St#st{running = maps:put(Pid, Where, Running), inflight = Inflight});
        {spawn_reply, Req, error, Why} when is_map_key(Req, St#st.running) ->
            loop(dispatch(exited(Req, {spawn_error, Why}, St)));
        {'DOWN', MRef, process, _, Outcome} when is_map_key(MRef, St#st.preparing) ->
            {{Node, Estimate}, Preparing} = maps:take(MRef, St#st.preparing),
            loop(dispatch(prepared(Node, Estimate, Outcome, St#st{preparing = Preparing})));
        {'EXIT', _, _} ->
            %% A copy we killed or abandoned, or a stray link: nothing to do.
            loop(St)
    after Wait ->
            fail(St, error, {bbc_plists, timeout,
                             #{timeout => St#st.timeout, done => St#st.done, total => St#st.total,
                               dead => St#st.dead,
                               preparing => lists:usort([N || {N, _} <- maps:values(St#st.preparing)])}},
                 [])
    end.

prepared(Node, Estimate, {bbc_prepared, {ok, Count}}, St) ->
    %% Swap this node's estimate for its real count.
    Slots = maps:update_with(Node, fun(C) -> C - Estimate + Count end, Count, St#st.slots),
    case is_map_key(Node, St#st.dead) of
        true -> St;
        false -> St#st{free = interleave(lists:duplicate(Count, Node), St#st.free), slots = Slots}
    end;
prepared(Node, _Estimate, {bbc_prepared, {error, Why}}, St) ->
    node_dead(Node, Why, St);
prepared(Node, _Estimate, Other, St) ->
    node_dead(Node, {prepare_crashed, Other}, St).

exited(Key, Reason, St) ->
    {{Node, Idx}, Running} = maps:take(Key, St#st.running),
    {Chunk, Keys, Started} = maps:get(Idx, St#st.inflight),
    Others = Keys -- [Key],
    St1 = St#st{running = Running,
                inflight = case Others of
                               [] -> maps:remove(Idx, St#st.inflight);
                               _ -> maps:put(Idx, {Chunk, Others, Started}, St#st.inflight)
                           end},
    case Reason of
        {bbc_done, Result} ->
            %% First copy wins: the others are killed, their slots freed.
            Freed = [begin kill(K), element(1, maps:get(K, Running)) end || K <- Others],
            Done = St#st.done + length(Chunk),
            report(St#st.progress, Done, St#st.total),
            St1#st{results = maps:put(Idx, Result, St#st.results),
                   inflight = maps:remove(Idx, St1#st.inflight),
                   running = maps:without(Others, Running),
                   free = [Node | Freed ++ St#st.free], done = Done};
        {bbc_raised, _Where, Class, Why, Stack} ->
            fail(St1, Class, Why, Stack);
        noconnection ->
            lost(Node, Idx, Chunk, Others, noconnection, St1);
        {spawn_error, noconnection} ->
            lost(Node, Idx, Chunk, Others, noconnection, St1);
        {spawn_error, Why} ->
            fail(St1, error, {bbc_plists, spawn_failed, #{node => Node, reason => Why}}, []);
        _ when Node =/= node() ->
            %% Killed as its node went down (init:stop) or by someone else on a live node.
            case lists:member(Node, nodes()) of
                false -> lost(Node, Idx, Chunk, Others, Reason, St1);
                true -> killed(Node, Idx, Reason, St1)
            end;
        _ ->
            killed(Node, Idx, Reason, St1)
    end.

-spec killed(node(), pos_integer(), term(), #st{}) -> no_return().
killed(Node, Idx, Reason, St) ->
    Details = case Reason of
                  {Why, [{_, _, _, _} | _] = Stack} -> #{reason => Why, stack => Stack};
                  _ -> #{reason => Reason}
              end,
    fail(St, error, {bbc_plists, worker_killed, Details#{node => Node, chunk => Idx}}, []).

%% A node is gone for this job: no more chunks go there; this chunk runs again elsewhere
%% unless another copy of it is still running.
lost(Node, Idx, Chunk, Others, Why, St) ->
    St1 = node_dead(Node, Why, St),
    case Others of
        [_ | _] -> St1;
        [] -> requeue(Node, Idx, Chunk, St1)
    end.

node_dead(Node, Why, St) ->
    case is_map_key(Node, St#st.dead) of
        true -> ok;
        false -> logger:warning("bbc_plists: node ~p lost for this job (~0p)", [Node, Why])
    end,
    St#st{dead = maps:put(Node, Why, St#st.dead), free = [N || N <- St#st.free, N =/= Node],
          slots = maps:remove(Node, St#st.slots)}.

requeue(Node, Idx, Chunk, St) ->
    Tries = maps:get(Idx, St#st.attempts, 0) + 1,
    case Tries > ?MAX_ATTEMPTS of
        true -> fail(St, error, {bbc_plists, chunk_lost, #{chunk => Idx, attempts => Tries - 1,
                                                           last_node => Node,
                                                           nodes => St#st.dead}}, []);
        false ->
            St#st{retry = [{Idx, Chunk} | St#st.retry],
                  attempts = maps:put(Idx, Tries, St#st.attempts)}
    end.

report(undefined, _, _) -> ok;
report(Fun, Done, Total) ->
    try Fun(Done, Total) catch _:_ -> ok end.

-spec fail(#st{}, error | exit | throw, term(), list()) -> no_return().
fail(St, Class, Reason, Stack) ->
    kill_all(St),
    throw({bbc_reply, {raise, Class, Reason, Stack}}).

kill_all(#st{running = Running} = St) ->
    lists:foreach(fun kill/1, maps:keys(Running)),
    kill_preparers(St).

kill_preparers(#st{preparing = Preparing}) ->
    maps:foreach(fun(MRef, _) -> erlang:demonitor(MRef, [flush]) end, Preparing),
    %% Their monitors are gone; they end by themselves within PREPARE_MS (an rpc to a hung
    %% node cannot be cancelled from here) and nothing of theirs reaches the caller.
    ok.

%% Stop a copy and swallow its last word.
kill(Req) when is_reference(Req) ->
    case erlang:spawn_request_abandon(Req) of
        true -> ok;
        false ->
            %% Its answer is already here: a process to stop after all.
            receive
                {spawn_reply, Req, ok, Pid} -> kill(Pid);
                {spawn_reply, Req, error, _} -> ok
            after 0 -> ok
            end
    end;
kill(Pid) ->
    unlink(Pid),
    exit(Pid, kill),
    receive {'EXIT', Pid, _} -> ok after 0 -> ok end.

%%% ------------------------------------------------------------------ options and slots

%% @doc Normalise a plists Malt into `#{chunk, slots, timeout, speculate, progress}';
%% raises `{bbc_plists, bad_option, #{option => Opt}}' for anything it does not know.
-spec parse_malt(malt()) -> opts().
parse_malt(Malt) ->
    Opts = lists:foldl(fun parse_opt/2, #{local => undefined, nodes => [], timeout => infinity,
                                         chunk => auto, speculate => true},
                       as_list(Malt)),
    Local = case {maps:get(local, Opts), maps:get(nodes, Opts)} of
                {undefined, []} -> [{node(), erlang:system_info(schedulers_online)}];
                {undefined, _} -> [];
                {N, _} -> [{node(), N}]
            end,
    maps:without([local, nodes], Opts#{slots => Local ++ maps:get(nodes, Opts)}).

as_list(Malt) when is_list(Malt) -> Malt;
as_list(Malt) -> [Malt].

parse_opt(N, Acc) when is_integer(N), N > 0 -> Acc#{chunk => N};
parse_opt({chunk, N}, Acc) when is_integer(N), N > 0 -> Acc#{chunk => N};
parse_opt({processes, schedulers}, Acc) ->
    Acc#{local => erlang:system_info(schedulers_online)};
parse_opt({processes, N}, Acc) when is_integer(N), N > 0 -> Acc#{local => N};
parse_opt({nodes, Nodes}, Acc) when is_list(Nodes) ->
    Acc#{nodes => maps:get(nodes, Acc) ++ [parse_node(N) || N <- Nodes]};
parse_opt({timeout, infinity}, Acc) -> Acc#{timeout => infinity};
parse_opt({timeout, Ms}, Acc) when is_integer(Ms), Ms >= 0 -> Acc#{timeout => Ms};
parse_opt({progress, Fun}, Acc) when is_function(Fun, 2) -> Acc#{progress => Fun};
parse_opt({speculate, B}, Acc) when is_boolean(B) -> Acc#{speculate => B};
parse_opt(Other, _Acc) -> erlang:error({bbc_plists, bad_option, #{option => Other}}).

parse_node({Node, schedulers}) when is_atom(Node) -> {Node, schedulers};
parse_node({Node, N}) when is_atom(Node), is_integer(N), N > 0 -> {Node, N};
parse_node(Node) when is_atom(Node) -> {Node, schedulers};
parse_node(Other) -> erlang:error({bbc_plists, bad_option, #{option => {nodes, Other}}}).

-spec preparer(node(), pos_integer() | schedulers, [module()], integer()) -> no_return().
preparer(Node, Count, Modules, Deadline) ->
    exit({bbc_prepared, prepare_node(Node, Count, Modules, Deadline)}).

%% Runs in a preparer process: load the code and learn the node's process count, every
%% rpc bounded by what is left before `Deadline'.
prepare_node(Node, Count, Modules, Deadline) ->
    try
        Before = connection(Node),
        Online = case rpc(Node, erlang, system_info, [schedulers_online], Deadline) of
                     N when is_integer(N) -> N;
                     Bad -> throw({bbc_code, {Node, Bad}})
                 end,
        Md5s = ensure_modules(Node, Modules, Deadline),
        case connection(Node) of
            Before when Before =/= undefined -> remember(Node, Before, Online, Md5s);
            _ -> ok
        end,
        {ok, resolve(Count, Online)}
    catch throw:{bbc_code, Why} -> {error, Why}
    end.

%% @doc Make `Node' run the same version of each module as this node, loading our object
%% code there when it is missing or differs (within 5 s in all). OTP's own modules are
%% left alone.
-spec ensure_code(node(), [module()]) -> ok | {error, term()}.
ensure_code(Node, Modules) ->
    try
        _ = ensure_modules(Node, Modules, erlang:monotonic_time(millisecond) + ?PREPARE_MS),
        ok
    catch throw:{bbc_code, Why} -> {error, Why}
    end.

%% Returns `#{Module => Md5 | otp}' for the cache.
ensure_modules(Node, Modules, Deadline) ->
    maps:from_list([case is_otp_module(M) of
                        true -> {M, otp};
                        false -> {M, ensure_module(Node, M, Deadline)}
                    end || M <- Modules]).

ensure_module(Node, Module, Deadline) ->
    Local = Module:module_info(md5),
    case rpc(Node, code, ensure_loaded, [Module], Deadline) of
        {badrpc, Why} -> throw({bbc_code, {Node, Why}});
        _ -> ok
    end,
    case rpc(Node, erlang, get_module_info, [Module, md5], Deadline) of
        Local -> Local;
        {badrpc, Why2} when Why2 =:= nodedown; Why2 =:= timeout -> throw({bbc_code, {Node, Why2}});
        _Missing ->
            case code:get_object_code(Module) of
                {Module, Bin, File} ->
                    _ = rpc(Node, code, soft_purge, [Module], Deadline),
                    case rpc(Node, code, load_binary, [Module, File, Bin], Deadline) of
                        {module, Module} -> Local;
                        Error -> throw({bbc_code, {Node, Module, Error}})
                    end;
                error ->
                    throw({bbc_code, {Node, Module, no_object_code}})
            end
    end.

rpc(Node, M, F, A, Deadline) ->
    case Deadline - erlang:monotonic_time(millisecond) of
        Left when Left > 0 -> rpc:call(Node, M, F, A, Left);
        _ -> {badrpc, timeout}
    end.

%%% ------------------------------------------------------------------ per-node cache

%% The id of the current connection to `Node', or undefined: a node that reconnected (or
%% restarted under the same name) has a new one, which invalidates what we cached.
connection(Node) ->
    case lists:keyfind(Node, 1, erlang:nodes(connected, #{connection_id => true})) of
        {Node, #{connection_id := Id}} -> Id;
        false -> undefined
    end.

cached(Node, Modules) ->
    case persistent_term:get(?CACHE(Node), undefined) of
        {Conn, Online, Md5s} ->
            Same = fun(M) ->
                           case maps:find(M, Md5s) of
                               {ok, otp} -> true;
                               {ok, Md5} -> Md5 =:= M:module_info(md5);
                               error -> false
                           end
                   end,
            case lists:all(Same, Modules) andalso connection(Node) =:= Conn of
                true -> {ok, Online};
                false -> miss
            end;
        undefined ->
            miss
    end.

remember(Node, Conn, Online, Md5s) ->
    Merged = case persistent_term:get(?CACHE(Node), undefined) of
                 {Conn, Online, Old} -> maps:merge(Old, Md5s);
                 _ -> Md5s
             end,
    case persistent_term:get(?CACHE(Node), undefined) of
        {Conn, Online, Merged} -> ok;
        _ -> persistent_term:put(?CACHE(Node), {Conn, Online, Merged})
    end.

%% @doc Drop what is cached about `Node' (its code is checked again by the next job).
%% Not needed after a reconnection, which is detected; for code changed there behind our
%% back.
-spec forget_node(node()) -> ok.
forget_node(Node) ->
    _ = persistent_term:erase(?CACHE(Node)),
    ok.

%% Spread processes over nodes so the first chunks do not all land on one node.
interleave([], Ys) -> Ys;
interleave(Xs, []) -> Xs;
interleave([X | Xs], [Y | Ys]) -> [X, Y | interleave(Xs, Ys)].

is_otp_module(Module) ->
    case code:which(Module) of
        Path when is_list(Path) -> lists:prefix(code:root_dir(), Path);
        _ -> true
    end.

fun_module(Fun) when is_function(Fun) ->
    {module, M} = erlang:fun_info(Fun, module),
    M.

%%% ------------------------------------------------------------------ helpers

group(MapFun, Chunk) ->
    Pairs = lists:flatmap(fun(X) -> pairs(MapFun(X)) end, Chunk),
    Rev = lists:foldl(fun({K, V}, Acc) -> maps:update_with(K, fun(Vs) -> [V | Vs] end, [V], Acc)
                      end, #{}, Pairs),
    maps:map(fun(_K, Vs) -> lists:reverse(Vs) end, Rev).

pairs(Map) when is_map(Map) -> maps:to_list(Map);
pairs(List) when is_list(List) -> List.

merge_all(_Fun, []) -> [];
merge_all(_Fun, [One]) -> One;
merge_all(Fun, Lists) -> merge_all(Fun, merge_pairs(Fun, Lists)).

merge_pairs(Fun, [A, B | Rest]) -> [lists:merge(Fun, A, B) | merge_pairs(Fun, Rest)];
merge_pairs(_Fun, Rest) -> Rest.
