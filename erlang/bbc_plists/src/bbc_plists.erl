%%% @doc Distributed parallel lists, with the plists API.
%%%
%%% Written for beambridge because the packaged plists (ec_plists) hangs with
%%% `{processes, N}' and `{nodes, ...}'. The list is cut into chunks; each chunk runs in
%%% its own process on a "slot" (a local process or a process on a worker node); results
%%% come back in the order of the input.
%%%
%%% Malt (options), a single term or a list of them:
%%% <ul>
%%%  <li>`N' or `{chunk, N}': items per chunk (default: about four chunks per slot);</li>
%%%  <li>`{processes, N | schedulers}': local processes;</li>
%%%  <li>`{nodes, [Node | {Node, N} | {Node, schedulers}]}': worker nodes and how many
%%%      processes each runs at once (default: its scheduler count);</li>
%%%  <li>`{timeout, Ms | infinity}': the whole operation's deadline;</li>
%%%  <li>`{progress, fun((DoneItems, TotalItems) -> any())}': called as chunks finish.</li>
%%% </ul>
%%% With neither `processes' nor `nodes', the work runs locally, one process per scheduler.
%%%
%%% Failure model: when a worker node dies (its processes go `noconnection'), its chunks
%%% run again on the surviving slots. When a worker raises, every running chunk is killed
%%% and the caller gets the same exception with the remote stack. All the bookkeeping
%%% happens in a separate coordinator process, so the caller's mailbox only ever sees one
%%% reply, and a killed caller takes its workers down with it.
%%%
%%% Code: the modules that define the funs (and this module) are loaded on worker nodes
%%% that lack them or have another version, so job code need not be installed there.
-module(bbc_plists).

-export([map/2, map/3, filter/2, filter/3, fold/3, fold/4, fold/5,
         foreach/2, foreach/3, sort/1, sort/2, sort/3,
         mapreduce/2, mapreduce/3, mapreduce/5,
         mapreduce_combine/3, mapreduce_combine/4,
         run_chunks/3, ensure_code/2, parse_malt/2]).

-define(RPC_TIMEOUT, 5000).
-define(MAX_ATTEMPTS, 3).

-type malt() :: term().

%%% ------------------------------------------------------------------ API

-spec map(fun((A) -> B), [A]) -> [B] when A :: term(), B :: term().
map(Fun, List) -> map(Fun, List, []).

-spec map(fun((A) -> B), [A], malt()) -> [B] when A :: term(), B :: term().
map(Fun, List, Malt) ->
    lists:append(run(fun(Chunk) -> lists:map(Fun, Chunk) end, [Fun], List, Malt)).

filter(Fun, List) -> filter(Fun, List, []).

filter(Fun, List, Malt) ->
    lists:append(run(fun(Chunk) -> lists:filter(Fun, Chunk) end, [Fun], List, Malt)).

%% @doc plists' fold/3: `Fun' folds each chunk and also fuses the chunk results.
fold(Fun, InitAcc, List) -> fold(Fun, Fun, InitAcc, List, []).

fold(Fun, InitAcc, List, Malt) -> fold(Fun, Fun, InitAcc, List, Malt).

%% @doc Fold each chunk from `InitAcc' with `Fun(Item, Acc)', then combine the chunk
%% results left to right with `Fuse(AccLeft, AccRight)'. `InitAcc' must be neutral for
%% `Fuse', as every chunk starts from it.
fold(Fun, Fuse, InitAcc, List, Malt) ->
    case run(fun(Chunk) -> lists:foldl(Fun, InitAcc, Chunk) end, [Fun], List, Malt) of
        [] -> InitAcc;
        [First | Rest] -> lists:foldl(fun(R, Acc) -> Fuse(Acc, R) end, First, Rest)
    end.

foreach(Fun, List) -> foreach(Fun, List, []).

foreach(Fun, List, Malt) ->
    _ = run(fun(Chunk) -> lists:foreach(Fun, Chunk) end, [Fun], List, Malt),
    ok.

sort(List) -> sort(fun erlang:'=<'/2, List, []).

sort(Fun, List) -> sort(Fun, List, []).

%% @doc Chunks are sorted in parallel, then merged; stable like lists:sort/2.
sort(Fun, List, Malt) ->
    Sorted = run(fun(Chunk) -> lists:sort(Fun, Chunk) end, [Fun], List, Malt),
    merge_all(Fun, Sorted).

%% @doc `MapFun(Item)' returns `[{Key, Value}]' (or a map); the answer is a map from
%% each key to all its values, in input order.
mapreduce(MapFun, List) -> mapreduce(MapFun, List, []).

mapreduce(MapFun, List, Malt) ->
    Groups = run(fun(Chunk) -> group(MapFun, Chunk) end, [MapFun], List, Malt),
    lists:foldl(fun(G, Acc) ->
                        maps:fold(fun(K, Vs, A) ->
                                          maps:update_with(K, fun(Old) -> Old ++ Vs end, Vs, A)
                                  end, Acc, G)
                end, #{}, Groups).

%% @doc plists' reducing form: after the parallel map, `ReduceFun(State, Key, Value)' is
%% folded over every pair (keys in term order, values in input order) on the caller.
mapreduce(MapFun, List, InitState, ReduceFun, Malt) ->
    Groups = mapreduce(MapFun, List, Malt),
    lists:foldl(fun({K, Vs}, State) ->
                        lists:foldl(fun(V, S) -> ReduceFun(S, K, V) end, State, Vs)
                end, InitState, lists:sort(maps:to_list(Groups))).

mapreduce_combine(MapFun, ReduceFun, List) -> mapreduce_combine(MapFun, ReduceFun, List, []).

%% @doc Map/reduce with a combiner: `ReduceFun(Key, Values) -> Value' runs on the workers
%% for each chunk and once more on the caller over the chunk results, so it must give the
%% same answer when fed its own outputs (sums, counts, max...). Returns `#{Key => Value}'.
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

run(Work, UserFuns, List, Malt) when is_list(List) ->
    Opts = parse_malt(Malt, length(List)),
    Modules = lists:usort([?MODULE | [fun_module(F) || F <- UserFuns]]),
    run_chunks(Work, chunk(List, maps:get(chunk, Opts)), Opts#{modules => Modules}).

%% @doc Run `Work(Chunk)' for every chunk on the slots in `Opts' and return the results in
%% chunk order; re-raises the first worker exception with its remote stack.
run_chunks(_Work, [], _Opts) ->
    [];
run_chunks(Work, Chunks, Opts) ->
    Caller = self(),
    Ref = make_ref(),
    {Pid, MRef} = spawn_monitor(fun() -> coordinator(Caller, Ref, Work, Chunks, Opts) end),
    receive
        {Ref, {ok, Results}} ->
            erlang:demonitor(MRef, [flush]),
            Results;
        {Ref, {raise, Class, Reason, Stack}} ->
            erlang:demonitor(MRef, [flush]),
            erlang:raise(Class, Reason, Stack);
        {'DOWN', MRef, process, Pid, Why} ->
            erlang:error({bbc_plists, coordinator_died, Why})
    end.

-record(st, {caller, ref, work, queue, free, running = #{}, results = #{}, dead = [],
             done = 0, total, count, deadline, progress, attempts = #{}}).

coordinator(Caller, Ref, Work, Chunks, Opts) ->
    _ = erlang:monitor(process, Caller),
    Deadline = case maps:get(timeout, Opts) of
                   infinity -> infinity;
                   Ms -> erlang:monotonic_time(millisecond) + Ms
               end,
    {Free, Dead} = prepare_slots(maps:get(slots, Opts), maps:get(modules, Opts, [])),
    Indexed = lists:zip(lists:seq(1, length(Chunks)), Chunks),
    St = #st{caller = Caller, ref = Ref, work = Work, queue = Indexed, free = Free,
             dead = Dead, total = lists:sum([length(C) || C <- Chunks]),
             count = length(Chunks), deadline = Deadline,
             progress = maps:get(progress, Opts, undefined)},
    Reply = try loop(dispatch(St))
            catch throw:{bbc_reply, R} -> R
            end,
    Caller ! {Ref, Reply}.

%% Fill every free slot with a queued chunk.
dispatch(#st{queue = [{Idx, Chunk} | Queue], free = [Node | Free], work = Work} = St) ->
    case lists:member(Node, St#st.dead) of
        true ->
            dispatch(St#st{free = Free});
        false ->
            {Pid, MRef} = spawn_worker(Node, Work, Chunk),
            Running = maps:put(MRef, {Pid, Node, Idx, Chunk}, St#st.running),
            dispatch(St#st{queue = Queue, free = Free, running = Running})
    end;
dispatch(#st{queue = [_ | _], free = [], running = Running} = St) when map_size(Running) =:= 0 ->
    fail(St, error, {bbc_plists, no_live_slots, St#st.dead}, []);
dispatch(St) ->
    St.

spawn_worker(Node, Work, Chunk) when Node =:= node() ->
    spawn_monitor(fun() -> work(Work, Chunk) end);
spawn_worker(Node, Work, Chunk) ->
    spawn_monitor(Node, fun() -> work(Work, Chunk) end).

%% A worker's whole answer travels in its exit reason: one message, nothing to clean up.
work(Work, Chunk) ->
    Result = try {bbc_done, Work(Chunk)}
             catch Class:Reason:Stack -> {bbc_raised, node(), Class, Reason, Stack}
             end,
    exit(Result).

loop(#st{running = Running, queue = []} = St) when map_size(Running) =:= 0 ->
    {ok, [maps:get(I, St#st.results) || I <- lists:seq(1, St#st.count)]};
loop(St) ->
    Wait = case St#st.deadline of
               infinity -> infinity;
               D -> max(0, D - erlang:monotonic_time(millisecond))
           end,
    receive
        {'DOWN', _, process, Caller, _} when Caller =:= St#st.caller ->
            kill_all(St),
            exit(normal);
        {'DOWN', MRef, process, _, Reason} when is_map_key(MRef, St#st.running) ->
            {{_Pid, Node, Idx, Chunk}, Running} = maps:take(MRef, St#st.running),
            loop(dispatch(handle_exit(Reason, Node, Idx, Chunk, St#st{running = Running})))
    after Wait ->
            fail(St, error, {bbc_plists, timeout}, [])
    end.

handle_exit({bbc_done, Result}, Node, Idx, Chunk, St) ->
    Done = St#st.done + length(Chunk),
    report(St#st.progress, Done, St#st.total),
    St#st{results = maps:put(Idx, Result, St#st.results), free = [Node | St#st.free],
          done = Done};
handle_exit({bbc_raised, _Where, Class, Reason, Stack}, _Node, _Idx, _Chunk, St) ->
    fail(St, Class, Reason, Stack);
handle_exit(noconnection, Node, Idx, Chunk, St) ->
    requeue(Node, Idx, Chunk, St);
handle_exit(Other, Node, Idx, Chunk, St) ->
    %% Killed from outside or the node is going down: try elsewhere, a bounded number of times.
    case net_adm:ping(Node) of
        pong -> fail(St, exit, {bbc_plists, worker_exit, Node, Other}, []);
        pang -> requeue(Node, Idx, Chunk, St)
    end.

requeue(Node, Idx, Chunk, St) ->
    Tries = maps:get(Idx, St#st.attempts, 0) + 1,
    case Tries > ?MAX_ATTEMPTS of
        true -> fail(St, error, {bbc_plists, chunk_lost, Node}, []);
        false ->
            Dead = lists:usort([Node | St#st.dead]),
            logger:warning("bbc_plists: node ~p lost, running chunk ~p again", [Node, Idx]),
            St#st{dead = Dead, free = [N || N <- St#st.free, N =/= Node],
                  queue = [{Idx, Chunk} | St#st.queue],
                  attempts = maps:put(Idx, Tries, St#st.attempts)}
    end.

report(undefined, _, _) -> ok;
report(Fun, Done, Total) ->
    try Fun(Done, Total) catch _:_ -> ok end.

fail(St, Class, Reason, Stack) ->
    kill_all(St),
    throw({bbc_reply, {raise, Class, Reason, Stack}}).

kill_all(#st{running = Running}) ->
    maps:foreach(fun(MRef, {Pid, _, _, _}) ->
                         erlang:demonitor(MRef, [flush]),
                         exit(Pid, kill)
                 end, Running).

%%% ------------------------------------------------------------------ options and slots

%% @doc Normalise a plists Malt into `#{chunk, slots, timeout, progress}'.
parse_malt(Malt, Len) when not is_list(Malt) -> parse_malt([Malt], Len);
parse_malt(Malt, Len) ->
    Opts = lists:foldl(fun parse_opt/2, #{local => undefined, nodes => [], timeout => infinity},
                       Malt),
    Local = case {maps:get(local, Opts), maps:get(nodes, Opts)} of
                {undefined, []} -> [{node(), erlang:system_info(schedulers_online)}];
                {undefined, _} -> [];
                {N, _} -> [{node(), N}]
            end,
    Slots = Local ++ maps:get(nodes, Opts),
    Online = erlang:system_info(schedulers_online),
    SlotCount = max(1, lists:sum([case C of schedulers -> Online; _ -> C end || {_, C} <- Slots])),
    Chunk = case maps:find(chunk, Opts) of
                {ok, C} -> C;
                error -> max(1, ceil(Len / (4 * SlotCount)))
            end,
    maps:without([local, nodes], Opts#{chunk => Chunk, slots => Slots}).

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
parse_opt(Other, _Acc) -> erlang:error({bbc_plists, bad_option, Other}).

parse_node({Node, schedulers}) when is_atom(Node) -> {Node, schedulers};
parse_node({Node, N}) when is_atom(Node), is_integer(N), N > 0 -> {Node, N};
parse_node(Node) when is_atom(Node) -> {Node, schedulers};
parse_node(Other) -> erlang:error({bbc_plists, bad_option, {nodes, Other}}).

%% Expand slots into one entry per process; resolve `schedulers'; load code on remote
%% nodes. Nodes that cannot be reached are returned as dead.
prepare_slots(Slots, Modules) ->
    lists:foldr(
      fun({Node, Count}, {Free, Dead}) ->
              case prepare_node(Node, Count, Modules) of
                  {ok, N} -> {interleave(lists:duplicate(N, Node), Free), Dead};
                  error -> {Free, [Node | Dead]}
              end
      end, {[], []}, Slots).

prepare_node(Node, schedulers, Modules) when Node =:= node() ->
    prepare_node(Node, erlang:system_info(schedulers_online), Modules);
prepare_node(Node, Count, _Modules) when Node =:= node() ->
    {ok, Count};
prepare_node(Node, Count, Modules) ->
    case ensure_code(Node, Modules) of
        ok when Count =:= schedulers ->
            case rpc:call(Node, erlang, system_info, [schedulers_online], ?RPC_TIMEOUT) of
                N when is_integer(N) -> {ok, N};
                _ -> error
            end;
        ok -> {ok, Count};
        {error, _} -> error
    end.

%% Spread processes over nodes so the first chunks do not all land on one node.
interleave([], Ys) -> Ys;
interleave(Xs, []) -> Xs;
interleave([X | Xs], [Y | Ys]) -> [X, Y | interleave(Xs, Ys)].

%% @doc Make `Node' run the same version of each module as this node, loading our object
%% code there when it is missing or differs. OTP's own modules are left alone.
ensure_code(Node, Modules) ->
    try
        lists:foreach(fun(M) -> ensure_module(Node, M) end,
                      [M || M <- Modules, not is_otp_module(M)])
    catch throw:{bbc_code, Why} -> {error, Why}
    end.

ensure_module(Node, Module) ->
    Local = Module:module_info(md5),
    case rpc:call(Node, code, ensure_loaded, [Module], ?RPC_TIMEOUT) of
        {badrpc, Why} -> throw({bbc_code, {Node, Why}});
        _ -> ok
    end,
    case rpc:call(Node, erlang, get_module_info, [Module, md5], ?RPC_TIMEOUT) of
        Local -> ok;
        {badrpc, nodedown} -> throw({bbc_code, {Node, nodedown}});
        _Missing ->
            case code:get_object_code(Module) of
                {Module, Bin, File} ->
                    _ = rpc:call(Node, code, soft_purge, [Module], ?RPC_TIMEOUT),
                    case rpc:call(Node, code, load_binary, [Module, File, Bin], ?RPC_TIMEOUT) of
                        {module, Module} -> ok;
                        Error -> throw({bbc_code, {Node, Module, Error}})
                    end;
                error ->
                    throw({bbc_code, {Node, Module, no_object_code}})
            end
    end.

is_otp_module(Module) ->
    case code:which(Module) of
        Path when is_list(Path) -> lists:prefix(code:root_dir(), Path);
        _ -> true
    end.

fun_module(Fun) when is_function(Fun) ->
    {module, M} = erlang:fun_info(Fun, module),
    M.

%%% ------------------------------------------------------------------ helpers

%% One pass, no length/1 per chunk (that made small chunks quadratic).
chunk(List, N) -> chunk(List, N, N, [], []).

chunk([], _N, _K, [], Acc) -> lists:reverse(Acc);
chunk([], _N, _K, Cur, Acc) -> lists:reverse([lists:reverse(Cur) | Acc]);
chunk(List, N, 0, Cur, Acc) -> chunk(List, N, N, [], [lists:reverse(Cur) | Acc]);
chunk([H | T], N, K, Cur, Acc) -> chunk(T, N, K - 1, [H | Cur], Acc).

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
