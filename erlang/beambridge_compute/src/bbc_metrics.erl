%%% @doc The service's counters, and `GET /metrics' in the Prometheus text format.
%%%
%%% bbc_jobs is the only writer: it counts each job as it ends (by op and status, with its
%%% duration in a histogram) and the throughput of the last minutes in 5-second buckets.
%%% Readers (the metrics and dashboard handlers) read the public table directly, so a scrape
%%% never waits on a server. The table belongs to bbc_jobs: when that restarts (its running
%%% jobs go with it) the counters start again from zero, which Prometheus reads as a reset.
-module(bbc_metrics).
-export([new/0, job_finished/3, store/2, sweep/1, throughput/1, render/0]).

-define(TAB, bbc_metrics).
-define(OPS, [<<"call">>, <<"map">>, <<"filter">>, <<"fold">>, <<"mapreduce">>, <<"sort">>]).
-define(STATUSES, [done, failed, cancelled, timeout]).
%% Upper bounds in milliseconds (a job takes from a millisecond to an hour).
-define(BUCKETS_MS, [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                     1800000]).
-define(TP_BUCKET_MS, 5000).
%% Throughput kept: the last ten minutes.
-define(TP_KEEP, 120).

%% @doc Create the table (in the calling process, bbc_jobs, which owns it).
-spec new() -> ok.
new() ->
    _ = ets:new(?TAB, [named_table, public, set, {write_concurrency, true}]),
    ets:insert(?TAB, [{store_bytes, 0}, {kept, 0}]),
    ok.

%% @doc Count a job that ended: `Status' is its final status (`too_large' counts as failed:
%% its result could not be kept); `DurationMs' from its start.
-spec job_finished(binary(), atom(), integer()) -> ok.
job_finished(Op, Status0, DurationMs) ->
    Status = case Status0 of too_large -> failed; S -> S end,
    case lists:member(Status, ?STATUSES) of
        false -> ok;
        true ->
            Ms = max(0, DurationMs),
            _ = ets:update_counter(?TAB, {total, Op, Status}, 1, {{total, Op, Status}, 0}),
            _ = ets:update_counter(?TAB, {count, Op}, 1, {{count, Op}, 0}),
            _ = ets:update_counter(?TAB, {sum_ms, Op}, Ms, {{sum_ms, Op}, 0}),
            Bucket = length(lists:takewhile(fun(B) -> Ms > B end, ?BUCKETS_MS)),
            _ = ets:update_counter(?TAB, {bucket, Op, Bucket}, 1, {{bucket, Op, Bucket}, 0}),
            Kind = case Status of
                       done -> done;
                       cancelled -> cancelled;
                       _ -> failed  % failed, timeout, too_large
                   end,
            Now = erlang:system_time(millisecond) div ?TP_BUCKET_MS,
            _ = ets:update_counter(?TAB, {tp, Now, Kind}, 1, {{tp, Now, Kind}, 0}),
            ok
    end.

%% @doc The bytes of finished results and error terms held now (bbc_jobs' budget), and the
%% finished jobs remembered.
-spec store(non_neg_integer(), non_neg_integer()) -> ok.
store(Bytes, Kept) ->
    ets:insert(?TAB, [{store_bytes, Bytes}, {kept, Kept}]),
    ok.

%% @doc Drop throughput buckets older than the ones kept.
-spec sweep(integer()) -> ok.
sweep(NowMs) ->
    Oldest = NowMs div ?TP_BUCKET_MS - ?TP_KEEP,
    _ = ets:select_delete(?TAB, [{{{tp, '$1', '_'}, '_'}, [{'<', '$1', Oldest}], [true]}]),
    ok.

%% @doc Jobs ended per 5-second bucket over the last `Buckets' (oldest first, the current
%% one last): `#{t => BucketStartMs, done => N, failed => N, cancelled => N}' (failed counts
%% timeouts too).
-spec throughput(pos_integer()) -> [#{t := integer(), done := non_neg_integer(),
                                       failed := non_neg_integer(), cancelled := non_neg_integer()}].
throughput(Buckets) ->
    Now = erlang:system_time(millisecond) div ?TP_BUCKET_MS,
    [#{t => B * ?TP_BUCKET_MS, done => count({tp, B, done}), failed => count({tp, B, failed}),
       cancelled => count({tp, B, cancelled})}
     || B <- lists:seq(Now - min(Buckets, ?TP_KEEP) + 1, Now)].

count(Key) ->
    case ets:lookup(?TAB, Key) of
        [{_, N}] -> N;
        [] -> 0
    end.

%% @doc The Prometheus text exposition (format 0.0.4) of the service's metrics.
-spec render() -> iolist().
render() ->
    Ops = lists:usort(?OPS ++ [Op || {{count, Op}, _} <- ets:tab2list(?TAB)]),
    Nodes = nodes_by_role(),
    [family(<<"beambridge_compute_jobs_total">>, counter,
            <<"Jobs that ended, by operation and how (done, failed, cancelled, timeout).">>,
            [{<<"beambridge_compute_jobs_total">>, [{op, Op}, {status, St}], count({total, Op, St})}
             || Op <- Ops, St <- ?STATUSES]),
     family(<<"beambridge_compute_job_duration_seconds">>, histogram,
            <<"How long jobs ran, from start to end, by operation.">>,
            lists:append([histogram(Op) || Op <- Ops])),
     family(<<"beambridge_compute_jobs_running">>, gauge, <<"Jobs running now.">>,
            [{<<"beambridge_compute_jobs_running">>, [], bbc_jobs:running_count()}]),
     family(<<"beambridge_compute_jobs_kept">>, gauge,
            <<"Finished jobs the service remembers (max_finished_jobs).">>,
            [{<<"beambridge_compute_jobs_kept">>, [], bbc_jobs:finished_count()}]),
     family(<<"beambridge_compute_result_store_bytes">>, gauge,
            <<"Bytes of finished results and error terms held (max_result_bytes).">>,
            [{<<"beambridge_compute_result_store_bytes">>, [], count(store_bytes)}]),
     family(<<"beambridge_compute_result_store_limit_bytes">>, gauge,
            <<"The budget for finished results (max_result_bytes).">>,
            [{<<"beambridge_compute_result_store_limit_bytes">>, [], bbc_config:get(max_result_bytes)}]),
     family(<<"beambridge_compute_nodes">>, gauge,
            <<"Nodes up, by role: service, local and remote workers, peer (other connected nodes, "
              "such as Python ones).">>,
            [{<<"beambridge_compute_nodes">>, [{role, R}], N} || {R, N} <- Nodes]),
     family(<<"beambridge_compute_http_connections">>, gauge, <<"Open HTTP connections.">>,
            [{<<"beambridge_compute_http_connections">>, [], safe(fun bbc_conns:count/0)}])].

histogram(Op) ->
    Counts = [count({bucket, Op, I}) || I <- lists:seq(0, length(?BUCKETS_MS))],
    Cumulative = tl(lists:reverse(lists:foldl(fun(C, [Acc | _] = L) -> [Acc + C | L] end, [0], Counts))),
    Les = [seconds(B) || B <- ?BUCKETS_MS] ++ [<<"+Inf">>],
    Name = <<"beambridge_compute_job_duration_seconds">>,
    [{<<Name/binary, "_bucket">>, [{op, Op}, {le, Le}], C} || {Le, C} <- lists:zip(Les, Cumulative)]
        ++ [{<<Name/binary, "_sum">>, [{op, Op}], {float, count({sum_ms, Op}) / 1000}},
            {<<Name/binary, "_count">>, [{op, Op}], count({count, Op})}].

nodes_by_role() ->
    Configured = bbc_nodes:configured(),
    Peers = bbc_nodes:peers(),
    Up = [R || #{role := R, status := up} <- Configured],
    [{service, 1}] ++ [{R, length([x || U <- Up, U =:= R])} || R <- [local, remote]]
        ++ [{peer, length(Peers)}].

safe(F) ->
    try F() catch _:_ -> 0 end.

%% 0.005, 0.01, 1.0, 30.0: the shortest text that reads back as the same float.
seconds(Ms) -> float_to_binary(Ms / 1000, [short]).

family(Name, Type, Help, Samples) ->
    [<<"# HELP ">>, Name, <<" ">>, Help, <<"\n# TYPE ">>, Name, <<" ">>, atom_to_binary(Type), <<"\n">>,
     [[Sample, labels(Labels), <<" ">>, value(V), <<"\n">>] || {Sample, Labels, V} <- Samples]].

labels([]) -> [];
labels(Labels) ->
    [<<"{">>, lists:join(<<",">>, [[atom_to_binary(K), <<"=\"">>, escape(label_text(V)), <<"\"">>]
                                   || {K, V} <- Labels]), <<"}">>].

label_text(V) when is_atom(V) -> atom_to_binary(V);
label_text(V) when is_binary(V) -> V.

escape(Text) ->
    binary:replace(binary:replace(binary:replace(Text, <<"\\">>, <<"\\\\">>, [global]),
                                  <<"\"">>, <<"\\\"">>, [global]),
                   <<"\n">>, <<"\\n">>, [global]).

value({float, F}) -> float_to_binary(F, [short]);
value(N) when is_integer(N) -> integer_to_binary(N).
