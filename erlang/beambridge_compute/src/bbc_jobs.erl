%%% @doc The job registry: admits jobs (in flight, in all and per client), enforces each
%%% job's deadline, answers long-poll waits, cancels, keeps finished jobs within a byte
%%% budget and a count, expires them, and recovers recorded jobs after a restart.
%%%
%%% No payload passes through this server. A request is admitted here with its metadata;
%%% the job process (a temporary child of bbc_job_sup, linked here) gets its plan straight
%%% from the HTTP process, writes its own outcome (result JSON or error) into the public
%%% table and, for a background job, to disk, and exits with `{shutdown, {bbc_job, Status,
%%% Bytes}}'. HTTP handlers read states, progress and outcomes from the table directly;
%%% only this server writes job states.
%%%
%%% Finished jobs are kept in finishing order: past `max_result_bytes' (results and error
%%% terms) the oldest outcomes are dropped (status `dropped', answered 410), past
%%% `max_finished_jobs' the oldest jobs are forgotten. A result alone over the budget fails
%%% its job. Expiry is indexed by time, so a sweep touches only what expires.
-module(bbc_jobs).
-behaviour(gen_server).

-export([start_link/0, submit/2, get/1, wait/2, notify/2, unnotify/2, cancel/1, forget/1, running/0]).
-export([running_count/0, finished_count/0, running_jobs/1, recent/2]).
-export([start_job/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% A job process's fun only ever exits (its outcome travels in the exit reason).
-dialyzer({no_return, start_job/1}).

-define(TAB, bbc_jobs).
-define(EXPIRY, bbc_jobs_expiry).
%% For listings (the dashboard): the ids of running jobs, and a history of the last
%% ?HISTORY jobs that ended (synchronous ones too, which are forgotten once answered): a
%% summary each (status, times, and a failure's reason and stack as a client sees them),
%% by the order they ended in.
-define(RUNNING, bbc_jobs_running).
-define(HISTORY_TAB, bbc_jobs_history).
-define(HISTORY, 200).
-define(SWEEP_MS, 250).
-define(PLAN_WAIT_MS, 10000).

-type id() :: binary().
-type state() :: #{atom() => term()}.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Start a job from a checked plan: `{ok, Id}' or `{error, busy | share | {unrecorded,
%% Why}}'. A background job is on disk before this returns `{ok, Id}'. `Body' is the
%% request as received (what a recovery parses again).
-spec submit(map(), binary()) -> {ok, id()} | {error, term()}.
submit(Plan, Body) ->
    Id = new_id(),
    Durable = maps:get(async, Plan),
    Client = maps:get(client, Plan, none),
    Recorded = case Durable of
                   %% Written before the job exists, so no outcome can precede its record.
                   true -> bbc_store:record(Id, #{body => Body, client => Client, ttl => maps:get(ttl, Plan),
                                                  submitted => erlang:system_time(millisecond)});
                   false -> ok
               end,
    case Recorded of
        ok ->
            case gen_server:call(?MODULE, {admit, Id, meta(Id, Plan)}) of
                {ok, Pid} ->
                    Pid ! {plan, Plan},
                    {ok, Id};
                Refused ->
                    Durable andalso bbc_store:remove(Id),
                    Refused
            end;
        {error, Why} -> {error, {unrecorded, Why}}
    end.

%% @doc The job's view (status, progress, and its outcome once finished), or `not_found'.
-spec get(id()) -> {ok, map()} | not_found.
get(Id) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, Job}] -> {ok, view(Id, Job)};
        [] -> not_found
    end.

%% @doc Like get/1, but waits up to `Ms' for a running job to finish.
-spec wait(id(), non_neg_integer()) -> {ok, map()} | not_found.
wait(Id, Ms) ->
    case ?MODULE:get(Id) of
        {ok, #{status := running}} when Ms > 0 ->
            Ref = make_ref(),
            case notify(Id, Ref) of
                ok -> receive {Ref, finished} -> ok after Ms -> unnotify(Id, Ref) end;
                finished -> ok
            end,
            ?MODULE:get(Id);
        Other -> Other
    end.

%% @doc `ok' and later `{Ref, finished}' sent to the caller when the job ends, or
%% `finished' at once when it has already (or never existed).
-spec notify(id(), reference()) -> ok | finished.
notify(Id, Ref) -> gen_server:call(?MODULE, {notify, Id, self(), Ref}).

%% @doc The caller no longer waits (it timed out or its client left).
-spec unnotify(id(), reference()) -> ok.
unnotify(Id, Ref) -> gen_server:cast(?MODULE, {unnotify, Id, self(), Ref}).

-spec cancel(id()) -> ok | {finished, map()} | not_found.
cancel(Id) -> gen_server:call(?MODULE, {cancel, Id}).

%% @doc Drop a job (a synchronous request that has its answer); a running one is stopped.
-spec forget(id()) -> ok.
forget(Id) -> gen_server:call(?MODULE, {forget, Id}).

-spec running() -> non_neg_integer().
running() -> gen_server:call(?MODULE, running).

%% @doc Jobs running now, from the index (no call; 0 between two lives of the server).
-spec running_count() -> non_neg_integer().
running_count() -> size_of(?RUNNING).

%% @doc Finished jobs remembered now (max_finished_jobs; no call).
-spec finished_count() -> non_neg_integer().
finished_count() ->
    case ets:lookup(bbc_metrics, kept) of
        [{_, N}] -> N;
        [] -> 0
    end.

size_of(Tab) ->
    case ets:info(Tab, size) of
        undefined -> 0;
        N -> N
    end.

%% @doc The views of the running jobs `Visible' accepts (a fun of the job's client), oldest
%% first: what the dashboard lists (at most max_jobs plus recovered ones waiting).
-spec running_jobs(fun((term()) -> boolean())) -> [map()].
running_jobs(Visible) ->
    Views = [V || {Id} <- safe_list(?RUNNING), {ok, V} <- [?MODULE:get(Id)], Visible(maps:get(client, V, none))],
    lists:sort(fun(A, B) -> maps:get(started, A, 0) =< maps:get(started, B, 0) end, Views).

%% @doc The summaries of the last `N' jobs that ended whose client `Visible' accepts, newest
%% first: id, op, fun, status, started, finished, client, and for a failure `error' (kind,
%% reason, stack: what `GET /jobs/ID' would say) or `reason'. Kept after the job itself is
%% forgotten, up to ?HISTORY jobs.
-spec recent(non_neg_integer(), fun((term()) -> boolean())) -> [map()].
recent(N, Visible) ->
    try recent(ets:last(?HISTORY_TAB), N, Visible, [])
    catch error:badarg -> []
    end.

recent('$end_of_table', _N, _Visible, Acc) -> lists:reverse(Acc);
recent(_Seq, 0, _Visible, Acc) -> lists:reverse(Acc);
recent(Seq, N, Visible, Acc) ->
    Next = ets:prev(?HISTORY_TAB, Seq),
    case ets:lookup(?HISTORY_TAB, Seq) of
        [{_, #{client := Client} = Summary}] ->
            case Visible(Client) of
                true -> recent(Next, N - 1, Visible, [Summary | Acc]);
                false -> recent(Next, N, Visible, Acc)
            end;
        _ -> recent(Next, N, Visible, Acc)
    end.

safe_list(Tab) ->
    try ets:tab2list(Tab) catch error:badarg -> [] end.

%%% ------------------------------------------------------------------ the job process

%% @doc bbc_job_sup's start function: a job that runs once its plan arrives.
-spec start_job(map()) -> {ok, pid()}.
start_job(Meta) -> {ok, proc_lib:spawn_link(fun() -> job(Meta) end)}.

job(#{id := Id, durable := Durable} = Meta) ->
    Plan = receive
               {plan, P} -> P
           after ?PLAN_WAIT_MS -> exit({shutdown, {bbc_job, lost, 0}})
           end,
    Total = maps:get(total, Plan),
    Progress = fun(Done, _ChunkTotal) -> ets:insert(?TAB, {{progress, Id}, {Done, Total}}) end,
    {Status, Outcome, Bytes} =
        try bbc_exec:run(Plan, Progress) of
            Result -> result(Result)
        catch Class:Reason:Stack ->
                Error = {Class, Reason, Stack},
                {failed, #{status => failed, error => Error}, erlang:external_size(Error)}
        end,
    ets:insert(?TAB, {{outcome, Id}, Outcome}),
    Durable andalso bbc_store:finished(Id, record_of(Meta, Outcome)),
    exit({shutdown, {bbc_job, Status, Bytes}}).

result(Json) ->
    Budget = bbc_config:get(max_result_bytes),
    case byte_size(Json) > Budget of
        false -> {done, #{status => done, result => Json}, byte_size(Json)};
        true ->
            Reason = iolist_to_binary(io_lib:format(
                       "the result is ~b bytes of JSON, over the service's budget of ~b bytes for "
                       "finished results (max_result_bytes)", [byte_size(Json), Budget])),
            {too_large, #{status => too_large, reason => Reason}, 0}
    end.

%% What goes to disk for a finished background job: enough to answer for it after a restart.
record_of(Meta, Outcome) ->
    Now = erlang:system_time(millisecond),
    maps:merge(maps:with([op, started, ttl, timeout, client], Meta),
               Outcome#{finished => Now, expires => Now + round(maps:get(ttl, Meta) * 1000)}).

%%% ------------------------------------------------------------------ server

-spec init([]) -> {ok, state()}.
init([]) ->
    process_flag(trap_exit, true),
    _ = ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(?EXPIRY, [named_table, protected, ordered_set]),
    _ = ets:new(?RUNNING, [named_table, protected, set, {read_concurrency, true}]),
    _ = ets:new(?HISTORY_TAB, [named_table, protected, ordered_set, {read_concurrency, true}]),
    ok = bbc_metrics:new(),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    _ = bbc_store:dir(),
    self() ! recover,
    {ok, #{running => #{},         % job pid => Id
           clients => #{},         % client => jobs in flight
           pending => queue:new(), % recovered jobs waiting for a slot: {Meta, Plan}
           waiters => #{},         % Id => [{notify, Pid, Ref}]
           writers => #{},         % Id => the last disk writer for it (writes are ordered)
           seq => 0,
           seqs => #{},                  % Id => Seq, for finished jobs
           finished => gb_trees:empty(), % Seq => Id, every finished job in finishing order
           kept => gb_trees:empty(),     % Seq => {Id, Bytes}, those holding an outcome
           bytes => 0}}.

-spec handle_call(term(), gen_server:from(), state()) -> {reply, term(), state()} | {noreply, state()}.
handle_call({admit, _Id, Meta}, _From, S) ->
    case room(maps:get(client, Meta), S) of
        ok ->
            {Pid, S2} = start(Meta, S),
            {reply, {ok, Pid}, S2};
        Refused -> {reply, {error, Refused}, S}
    end;
handle_call({notify, Id, Pid, Ref}, _From, #{waiters := W} = S) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running}}] ->
            Waiter = {notify, Pid, Ref},
            {reply, ok, S#{waiters := maps:update_with(Id, fun(L) -> [Waiter | L] end, [Waiter], W)}};
        _ -> {reply, finished, S}
    end;
handle_call({cancel, Id}, _From, S) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running} = Job}] -> {reply, ok, stop_job(Id, Job, cancelled, S)};
        [{_, Job}] -> {reply, {finished, view(Id, Job)}, S};
        [] -> {reply, not_found, S}
    end;
handle_call({forget, Id}, _From, S) ->
    S2 = case ets:lookup(?TAB, {job, Id}) of
             [{_, #{status := running} = Job}] -> stop_job(Id, Job, cancelled, S);
             _ -> S
         end,
    {reply, ok, drop(Id, S2)};
handle_call(running, _From, #{running := R} = S) ->
    {reply, map_size(R), S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

-spec handle_cast(term(), state()) -> {noreply, state()}.
handle_cast({unnotify, Id, Pid, Ref}, #{waiters := W} = S) ->
    W2 = case maps:find(Id, W) of
             {ok, L} ->
                 case lists:delete({notify, Pid, Ref}, L) of
                     [] -> maps:remove(Id, W);
                     L2 -> W#{Id := L2}
                 end;
             error -> W
         end,
    {noreply, S#{waiters := W2}};
handle_cast(_Msg, S) -> {noreply, S}.

-spec handle_info(term(), state()) -> {noreply, state()}.
handle_info({'EXIT', Pid, Reason}, #{running := Running} = S) when is_map_key(Pid, Running) ->
    Id = maps:get(Pid, Running),
    {Status, Bytes} = case Reason of
                          {shutdown, {bbc_job, St, B}} -> {St, B};
                          Other ->
                              %% Died without writing its outcome: say how.
                              Error = {exit, Other, []},
                              ets:insert(?TAB, {{outcome, Id}, #{status => failed, error => Error}}),
                              {failed, erlang:external_size(Error)}
                      end,
    [{_, Job}] = ets:lookup(?TAB, {job, Id}),
    {noreply, finish(Id, Job, Status, Bytes, S)};
handle_info({'EXIT', _Pid, _Reason}, S) ->
    {noreply, S};
handle_info({deadline, Id}, S) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running} = Job}] -> {noreply, stop_job(Id, Job, timeout, S)};
        _ -> {noreply, S}
    end;
handle_info(sweep, S) ->
    erlang:send_after(?SWEEP_MS, self(), sweep),
    Now = erlang:system_time(millisecond),
    ok = bbc_metrics:sweep(Now),
    {noreply, expire(Now, S)};
handle_info(recover, S) ->
    {noreply, lists:foldl(fun recover/2, S, bbc_store:recover())};
handle_info({'DOWN', _, process, Pid, _}, #{writers := Writers} = S) ->
    %% A writer is done: forget it unless a later one for the same job took its place.
    {noreply, S#{writers := maps:filter(fun(_, W) -> W =/= Pid end, Writers)}};
handle_info(_Msg, S) ->
    {noreply, S}.

-spec terminate(term(), state()) -> ok.
terminate(_Reason, #{running := Running}) ->
    [exit(Pid, kill) || Pid <- maps:keys(Running)],
    ok.

%%% ------------------------------------------------------------------ admission

new_id() -> string:lowercase(binary:encode_hex(crypto:strong_rand_bytes(8))).

meta(Id, Plan) ->
    #{id => Id, client => maps:get(client, Plan, none), durable => maps:get(async, Plan),
      ttl => maps:get(ttl, Plan), timeout => maps:get(timeout, Plan), op => maps:get(op, Plan),
      'fun' => fun_name(Plan), total => maps:get(total, Plan),
      started => erlang:system_time(millisecond)}.

%% "module:function" of the job's main function (what a listing shows).
fun_name(#{call := F}) -> fun_text(F);
fun_name(#{funs := #{f := F}}) -> fun_text(F);
fun_name(#{funs := #{map := F}}) -> fun_text(F);
fun_name(_) -> null.

fun_text(F) when is_function(F) ->
    {module, M} = erlang:fun_info(F, module),
    {name, N} = erlang:fun_info(F, name),
    <<(atom_to_binary(M))/binary, ":", (atom_to_binary(N))/binary>>;
fun_text(_) -> null.

room(Client, #{running := Running, clients := Clients}) ->
    case {map_size(Running) >= bbc_config:get(max_jobs),
          maps:get(Client, Clients, 0) >= bbc_config:client_share()} of
        {true, _} -> busy;
        {_, true} -> share;
        _ -> ok
    end.

%% A job process, linked here, with its row, its deadline and its client's count.
start(#{id := Id, client := Client, timeout := Timeout, total := Total} = Meta,
      #{running := Running, clients := Clients} = S) ->
    {ok, Pid} = bbc_job_sup:start_job(Meta),
    link(Pid),
    ets:insert(?TAB, {{progress, Id}, {0, Total}}),
    Timer = erlang:send_after(Timeout, self(), {deadline, Id}),
    ets:insert(?TAB, {{job, Id}, Meta#{status => running, pid => Pid, timer => Timer}}),
    ets:insert(?RUNNING, {Id}),
    {Pid, S#{running := Running#{Pid => Id},
             clients := maps:update_with(Client, fun(N) -> N + 1 end, 1, Clients)}}.

%% A slot came free: a recovered job waiting for one takes it.
release(Pid, #{running := Running, clients := Clients} = S) ->
    Id = maps:get(Pid, Running),
    Client = case ets:lookup(?TAB, {job, Id}) of
                 [{_, #{client := C}}] -> C;
                 _ -> none
             end,
    Clients2 = case maps:get(Client, Clients, 0) of
                   N when N =< 1 -> maps:remove(Client, Clients);
                   N -> Clients#{Client := N - 1}
               end,
    start_pending(S#{running := maps:remove(Pid, Running), clients := Clients2}).

start_pending(#{pending := Pending} = S) ->
    case queue:out(Pending) of
        {{value, {#{client := Client} = Meta, Plan}}, Rest} ->
            case room(Client, S) of
                ok ->
                    {Pid, S2} = start(Meta, S#{pending := Rest}),
                    Pid ! {plan, Plan},
                    start_pending(S2);
                _ -> S
            end;
        {empty, _} -> S
    end.

%%% ------------------------------------------------------------------ endings

%% Stop a running job (its coordinator and workers follow) and record why it ended. Its
%% supervisor ends it, so no crash is reported; it is gone when this returns, so nothing it
%% writes can come after what is recorded here.
stop_job(Id, #{pid := none} = Job, Status, #{pending := Pending} = S) ->
    Left = queue:filter(fun({#{id := I}, _}) -> I =/= Id end, Pending),
    stopped(Id, Job, Status, S#{pending := Left});
stop_job(Id, #{pid := Pid} = Job, Status, S) ->
    unlink(Pid),
    _ = supervisor:terminate_child(bbc_job_sup, Pid),
    receive {'EXIT', Pid, _} -> ok after 0 -> ok end,
    stopped(Id, Job, Status, S).

stopped(Id, Job, Status, S) ->
    %% Anything it wrote is superseded by Status.
    ets:delete(?TAB, {outcome, Id}),
    S2 = finish(Id, Job, Status, 0, S),
    case Job of
        #{durable := true} -> persist(Id, record_of(Job, #{status => Status}), S2);
        _ -> S2
    end.

finish(Id, #{pid := Pid, timer := Timer} = Job, Status, Bytes, #{waiters := W} = S) ->
    _ = is_reference(Timer) andalso erlang:cancel_timer(Timer),
    Now = erlang:system_time(millisecond),
    Expires = Now + round(maps:get(ttl, Job) * 1000),
    Done = (maps:without([pid, timer], Job))#{status => Status, finished => Now, expires => Expires},
    ets:insert(?TAB, {{job, Id}, Done}),
    ets:insert(?EXPIRY, {{Expires, Id}}),
    ets:delete(?RUNNING, Id),
    ok = bbc_metrics:job_finished(maps:get(op, Job), Status, Now - maps:get(started, Job, Now)),
    history(Id, Done, S),
    [Waiting ! {Ref, finished} || {notify, Waiting, Ref} <- maps:get(Id, W, [])],
    S2 = case Pid of
             none -> S#{waiters := maps:remove(Id, W)};
             _ -> release(Pid, S#{waiters := maps:remove(Id, W)})
         end,
    make_room(keep(Id, Bytes, S2)).

keep(Id, Bytes, #{seq := Seq, seqs := Seqs, finished := F, kept := K, bytes := Total} = S) ->
    published(S#{seq := Seq + 1, seqs := Seqs#{Id => Seq}, finished := gb_trees:insert(Seq, Id, F),
                 kept := case Bytes of 0 -> K; _ -> gb_trees:insert(Seq, {Id, Bytes}, K) end,
                 bytes := Total + Bytes}).

%% The store's size, for /metrics.
published(#{bytes := Bytes, finished := F} = S) ->
    ok = bbc_metrics:store(Bytes, gb_trees:size(F)),
    S.

%% A job that ended goes into the history (the oldest entry out past ?HISTORY). Its failure
%% is formatted now, bounded (depth-limited reason, the job's own frames), so the history
%% never holds a large term. Seq orders it after every earlier ending.
history(Id, Done, #{seq := Seq}) ->
    Status = maps:get(status, Done),
    Outcome = case lists:member(Status, [failed, too_large]) andalso ets:lookup(?TAB, {outcome, Id}) of
                  [{_, #{status := Status, error := Error}}] ->
                      #{error => maps:remove(term, bbc_http:error_json(Error))};
                  [{_, #{status := Status, reason := Reason}}] -> #{reason => Reason};
                  _ when Status =:= timeout ->
                      #{reason => iolist_to_binary(io_lib:format("did not finish within its ~b ms",
                                                                 [maps:get(timeout, Done, 0)]))};
                  _ -> maps:with([reason], Done)
              end,
    Summary = maps:merge((maps:with([op, 'fun', started, finished, client, status], Done))#{id => Id},
                         Outcome),
    ets:insert(?HISTORY_TAB, {Seq, Summary}),
    case ets:info(?HISTORY_TAB, size) > ?HISTORY of
        true -> ets:delete(?HISTORY_TAB, ets:first(?HISTORY_TAB));
        false -> true
    end.

%% Oldest outcomes go first past the byte budget, oldest jobs past the count.
make_room(#{kept := K, bytes := Total, finished := F} = S) ->
    Count = gb_trees:size(F) > bbc_config:get(max_finished_jobs),
    Over = Total > bbc_config:get(max_result_bytes) andalso not gb_trees:is_empty(K),
    if
        Count ->
            {_, Id} = gb_trees:smallest(F),
            make_room(drop(Id, S));
        Over ->
            {_Seq, {Id, Bytes}, K2} = gb_trees:take_smallest(K),
            ets:delete(?TAB, {outcome, Id}),
            Dropped = #{status => dropped,
                        reason => <<"the result was dropped to keep finished results within the "
                                    "service's budget (max_result_bytes)">>},
            S2 = case ets:lookup(?TAB, {job, Id}) of
                     [{_, Job}] ->
                         ets:insert(?TAB, {{job, Id}, maps:merge(Job, Dropped)}),
                         case Job of
                             #{durable := true} -> persist(Id, record_of(Job, Dropped), S);
                             _ -> S
                         end;
                     [] -> S
                 end,
            make_room(published(S2#{kept := K2, bytes := Total - Bytes}));
        true -> S
    end.

%% Remove a job, its outcome, its expiry entry and its files; O(log n).
drop(Id, #{finished := F, kept := K, bytes := Total, seqs := Seqs} = S) ->
    Job = case ets:lookup(?TAB, {job, Id}) of [{_, J}] -> J; [] -> #{} end,
    ets:delete(?TAB, {job, Id}),
    ets:delete(?TAB, {progress, Id}),
    ets:delete(?TAB, {outcome, Id}),
    ets:delete(?RUNNING, Id),
    case Job of
        #{expires := Expires} -> ets:delete(?EXPIRY, {Expires, Id});
        _ -> ok
    end,
    S2 = case Job of
             #{durable := true} -> persist(Id, remove, S);
             _ -> S
         end,
    case maps:take(Id, Seqs) of
        {Seq, Seqs2} ->
            {K2, Freed} = case gb_trees:lookup(Seq, K) of
                              {value, {_, B}} -> {gb_trees:delete(Seq, K), B};
                              none -> {K, 0}
                          end,
            published(S2#{finished := gb_trees:delete_any(Seq, F), kept := K2, bytes := Total - Freed,
                          seqs := Seqs2});
        error -> S2
    end.

expire(Now, S) ->
    case ets:first(?EXPIRY) of
        {Expires, Id} when Expires < Now -> expire(Now, drop(Id, S));
        _ -> S
    end.

%% Disk writes for one job happen in the order they were asked for: each writer waits for
%% the one before it (the job process writes its own outcome before it exits, so before any
%% of these), and a later state never loses to an earlier one. A big write never holds this
%% server. What = an outcome to record, or `remove'.
persist(Id, What, #{writers := Writers} = S) ->
    Before = maps:get(Id, Writers, none),
    {Writer, _} = spawn_monitor(
                    fun() ->
                            is_pid(Before) andalso
                                begin
                                    M = erlang:monitor(process, Before),
                                    receive {'DOWN', M, process, Before, _} -> true end
                                end,
                            case What of
                                remove -> bbc_store:remove(Id);
                                Outcome -> bbc_store:finished(Id, Outcome)
                            end
                    end),
    S#{writers := Writers#{Id => Writer}}.

%%% ------------------------------------------------------------------ recovery

%% A recorded job after a restart: its outcome back in the table, or its request run again
%% (when slots allow; else it waits for one), or, when that request no longer parses (the
%% config changed) or its record is unreadable, `lost' with the reason.
recover({Id, Facts, Outcome}, S) ->
    Now = erlang:system_time(millisecond),
    case {Facts, Outcome} of
        {_, #{expires := Expires}} when Expires < Now ->
            bbc_store:remove(Id), S;
        {_, #{status := _} = Done} ->
            restore(Id, Done, S);
        {#{body := Body} = F, none} ->
            Parsed = try bbc_json:decode(Body) of
                         {ok, Spec} -> bbc_exec:parse(Spec);
                         Bad -> Bad
                     catch Class:Why -> {error, Class, Why}
                     end,
            case Parsed of
                {ok, #{async := true} = Plan0} ->
                    logger:notice("bbc_jobs: job ~s was accepted before a restart; running it again", [Id]),
                    Plan = Plan0#{client => maps:get(client, F, none)},
                    Meta = meta(Id, Plan),
                    %% Visible at once; started when a slot is free.
                    ets:insert(?TAB, {{progress, Id}, {0, maps:get(total, Plan)}}),
                    ets:insert(?TAB, {{job, Id}, Meta#{status => running, pid => none, timer => none}}),
                    ets:insert(?RUNNING, {Id}),
                    start_pending(S#{pending := queue:in({Meta, Plan}, maps:get(pending, S))});
                Other ->
                    lost(Id, io_lib:format("its request no longer runs here (~0P)", [Other, 12]), S)
            end;
        {Unreadable, Unreadable2} ->
            lost(Id, io_lib:format("its record is unreadable (~0P)", [{Unreadable, Unreadable2}, 8]), S)
    end.

restore(Id, Done, S) ->
    Row = maps:merge(#{client => none, durable => true, op => <<"unknown">>, started => 0, ttl => 0,
                       timeout => 0}, maps:without([result, error], Done)),
    ets:insert(?TAB, {{progress, Id}, {0, 0}}),
    ets:insert(?TAB, {{job, Id}, Row}),
    ets:insert(?EXPIRY, {{maps:get(expires, Row), Id}}),
    Bytes = case maps:with([status, result, error, reason], Done) of
                #{result := R} = O -> ets:insert(?TAB, {{outcome, Id}, O}), byte_size(R);
                #{error := E} = O -> ets:insert(?TAB, {{outcome, Id}, O}), erlang:external_size(E);
                _ -> 0
            end,
    make_room(keep(Id, Bytes, S)).

lost(Id, Why, S) ->
    logger:warning("bbc_jobs: job ~s is lost: ~s", [Id, Why]),
    Now = erlang:system_time(millisecond),
    Ttl = bbc_config:get(result_ttl_s),
    Row = #{status => lost, client => none, durable => true, op => <<"unknown">>, started => Now,
            ttl => Ttl, timeout => 0, finished => Now, expires => Now + round(Ttl * 1000),
            reason => iolist_to_binary(["the service restarted and the job could not be run again: ",
                                        Why])},
    ets:insert(?TAB, {{progress, Id}, {0, 0}}),
    ets:insert(?TAB, {{job, Id}, Row}),
    ets:insert(?EXPIRY, {{maps:get(expires, Row), Id}}),
    history(Id, Row, S),
    make_room(keep(Id, 0, persist(Id, Row, S))).

%%% ------------------------------------------------------------------ views

view(Id, Job) ->
    {Done, Total} = case ets:lookup(?TAB, {progress, Id}) of
                        [{_, P}] -> P;
                        [] -> {0, 0}
                    end,
    Status = maps:get(status, Job),
    %% The job's own outcome counts only while its row agrees it ended that way (a job
    %% stopped for its deadline may have written one just before).
    Outcome = case lists:member(Status, [done, failed, too_large]) andalso ets:lookup(?TAB, {outcome, Id}) of
                  [{_, #{status := Status} = O}] -> maps:with([result, error, reason], O);
                  _ -> #{}
              end,
    Base = maps:merge(maps:with([status, reason, op, 'fun', started, finished, timeout, client], Job),
                      Outcome),
    Progress = case Status of
                   done -> {Total, Total};
                   _ -> {Done, Total}
               end,
    Base#{id => Id, progress => Progress}.
