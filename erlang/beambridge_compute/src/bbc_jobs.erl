%%% @doc The job registry: starts jobs, enforces the in-flight limits (in all and per
%%% client) and each job's deadline, answers status and long-poll waits, cancels, keeps
%%% finished results within a memory budget, and expires them.
%%%
%%% Each job runs in its own process whose whole outcome travels in its exit reason, so a
%%% job's end is one 'DOWN' message here. Status is kept in a public ets table that HTTP
%%% handlers read directly; only this server writes job states. Progress is written by the
%%% job's coordinator under a separate key, so it never races a state change.
%%%
%%% Results are JSON text encoded by the job itself; their bytes count against
%%% `max_result_bytes'. Past it the oldest finished results are dropped (their status
%%% becomes `dropped', answered 410); a result alone over the budget fails its job.
%%% Background jobs are recorded by bbc_store before they are acknowledged; at start
%%% this server reloads their outcomes and runs again those that had none.
-module(bbc_jobs).
-behaviour(gen_server).

-export([start_link/0, submit/2, get/1, wait/2, cancel/1, forget/1, running/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TAB, bbc_jobs).
-define(SWEEP_MS, 250).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Start a job from a checked plan: `{ok, Id}' or `{error, busy | share | {unrecorded,
%% Why}}'. A background job is on disk before this returns `{ok, Id}'. `Body' is the
%% request as received (what a recovery parses again).
-spec submit(map(), binary()) -> {ok, binary()} | {error, term()}.
submit(#{async := true} = Plan, Body) ->
    Id = new_id(),
    Facts = #{body => Body, client => maps:get(client, Plan), submitted => erlang:system_time(millisecond)},
    %% Written before the job exists, so no outcome can precede its record.
    case bbc_store:record(Id, Facts) of
        ok ->
            case gen_server:call(?MODULE, {submit, Id, Plan}) of
                {ok, Id} -> {ok, Id};
                Refused -> bbc_store:remove(Id), Refused
            end;
        {error, Why} -> {error, {unrecorded, Why}}
    end;
submit(Plan, _Body) ->
    gen_server:call(?MODULE, {submit, new_id(), Plan}).

%% @doc The job's public view, or `not_found'.
get(Id) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, Job}] -> {ok, view(Id, Job)};
        [] -> not_found
    end.

%% @doc Like get/1, but waits up to `Ms' for a running job to finish.
wait(Id, Ms) ->
    case ?MODULE:get(Id) of
        {ok, #{status := running}} when Ms > 0 ->
            gen_server:call(?MODULE, {wait, Id, Ms}, Ms + 5000);
        Other -> Other
    end.

cancel(Id) -> gen_server:call(?MODULE, {cancel, Id}).

%% @doc Drop a job (used after a synchronous request has its answer).
forget(Id) -> gen_server:call(?MODULE, {forget, Id}).

running() -> gen_server:call(?MODULE, running).

%%% ------------------------------------------------------------------ server

init([]) ->
    process_flag(trap_exit, true),
    _ = ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    _ = bbc_store:dir(),
    self() ! recover,
    %% running: MonitorRef => Id; clients: Client => jobs in flight; waiters: Id => [From];
    %% kept: queue of {Id, Bytes} in the order results finished; bytes: their total.
    {ok, #{running => #{}, clients => #{}, waiters => #{}, kept => queue:new(), bytes => 0}}.

handle_call({submit, Id, Plan}, _From, #{running := Running, clients := Clients} = S) ->
    Client = maps:get(client, Plan, none),
    case {map_size(Running) >= bbc_config:get(max_jobs),
          maps:get(Client, Clients, 0) >= bbc_config:client_share()} of
        {true, _} -> {reply, {error, busy}, S};
        {_, true} -> {reply, {error, share}, S};
        _ -> {reply, {ok, Id}, start(Id, Plan, S)}
    end;
handle_call({wait, Id, Ms}, From, #{waiters := W} = S) ->
    case ?MODULE:get(Id) of
        {ok, #{status := running}} ->
            erlang:send_after(Ms, self(), {wait_over, Id, From}),
            {noreply, S#{waiters := maps:update_with(Id, fun(L) -> [From | L] end, [From], W)}};
        Other -> {reply, Other, S}
    end;
handle_call({cancel, Id}, _From, S) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running} = Job}] -> {reply, ok, stop_job(Id, Job, cancelled, S)};
        [{_, Job}] -> {reply, {finished, view(Id, Job)}, S};
        [] -> {reply, not_found, S}
    end;
handle_call({forget, Id}, _From, S) ->
    {reply, ok, drop(Id, S)};
handle_call(running, _From, #{running := R} = S) ->
    {reply, map_size(R), S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

handle_cast(_Msg, S) -> {noreply, S}.

handle_info({'DOWN', MRef, process, _Pid, Reason}, #{running := Running} = S)
  when is_map_key(MRef, Running) ->
    Id = maps:get(MRef, Running),
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running} = Job}] ->
            Outcome = case Reason of
                          {bbc_job, ok, Result} -> #{status => done, result => Result};
                          {bbc_job, raised, Class, Why, Stack} ->
                              #{status => failed, error => {Class, Why, Stack}};
                          Other -> #{status => failed, error => {exit, Other, []}}
                      end,
            {noreply, finish(Id, Job, Outcome, S)};
        _ -> {noreply, untrack(MRef, S)}
    end;
handle_info({'DOWN', _, process, _, _}, S) ->
    {noreply, S};
handle_info({deadline, Id}, S) ->
    case ets:lookup(?TAB, {job, Id}) of
        [{_, #{status := running} = Job}] -> {noreply, stop_job(Id, Job, timeout, S)};
        _ -> {noreply, S}
    end;
handle_info({wait_over, Id, From}, #{waiters := W} = S) ->
    case maps:find(Id, W) of
        {ok, Froms} ->
            case lists:member(From, Froms) of
                true -> gen_server:reply(From, ?MODULE:get(Id));
                false -> ok
            end,
            W2 = case Froms -- [From] of [] -> maps:remove(Id, W); L -> W#{Id := L} end,
            {noreply, S#{waiters := W2}};
        error -> {noreply, S}
    end;
handle_info(sweep, S) ->
    Now = erlang:system_time(millisecond),
    Expired = ets:select(?TAB, [{{{job, '$1'}, #{expires => '$2'}}, [{'<', '$2', Now}], ['$1']}]),
    S2 = lists:foldl(fun drop/2, S, Expired),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {noreply, S2};
handle_info(recover, S) ->
    {noreply, lists:foldl(fun recover/2, S, bbc_store:recover())};
handle_info(_Msg, S) ->
    {noreply, S}.

terminate(_Reason, #{running := Running}) ->
    [exit(Pid, kill) || Id <- maps:values(Running),
                        {_, #{pid := Pid}} <- ets:lookup(?TAB, {job, Id})],
    ok.

%%% ------------------------------------------------------------------ internals

new_id() -> string:lowercase(binary:encode_hex(crypto:strong_rand_bytes(8))).

start(Id, Plan, #{running := Running, clients := Clients} = S) ->
    Total = maps:get(total, Plan),
    Client = maps:get(client, Plan, none),
    ets:insert(?TAB, {{progress, Id}, {0, Total}}),
    Progress = fun(Done, _ChunkTotal) -> ets:insert(?TAB, {{progress, Id}, {Done, Total}}) end,
    {Pid, MRef} = spawn_monitor(fun() -> run_job(Plan, Progress) end),
    Timer = erlang:send_after(maps:get(timeout, Plan), self(), {deadline, Id}),
    Job = #{status => running, pid => Pid, mref => MRef, timer => Timer, client => Client,
            ttl => maps:get(ttl, Plan), timeout => maps:get(timeout, Plan),
            durable => maps:get(async, Plan), op => maps:get(op, Plan),
            started => erlang:system_time(millisecond)},
    ets:insert(?TAB, {{job, Id}, Job}),
    S#{running := Running#{MRef => Id},
       clients := maps:update_with(Client, fun(N) -> N + 1 end, 1, Clients)}.

run_job(Plan, Progress) ->
    Result = try {bbc_job, ok, bbc_exec:run(Plan, Progress)}
             catch Class:Reason:Stack -> {bbc_job, raised, Class, Reason, Stack}
             end,
    exit(Result).

%% Kill a running job (its coordinator and workers follow) and record why it ended.
stop_job(Id, #{pid := Pid, mref := MRef} = Job, Status, S) ->
    erlang:demonitor(MRef, [flush]),
    exit(Pid, kill),
    finish(Id, Job, #{status => Status}, S).

%% Forget a running job's slot (its monitor, its client's count).
untrack(MRef, #{running := Running, clients := Clients} = S) ->
    case maps:take(MRef, Running) of
        {Id, Rest} ->
            Client = case ets:lookup(?TAB, {job, Id}) of
                         [{_, #{client := C}}] -> C;
                         _ -> none
                     end,
            Clients2 = case maps:get(Client, Clients, 0) of
                           N when N =< 1 -> maps:remove(Client, Clients);
                           N -> Clients#{Client := N - 1}
                       end,
            S#{running := Rest, clients := Clients2};
        error -> S
    end.

finish(Id, #{mref := MRef, timer := Timer} = Job, Outcome0, S0) ->
    _ = erlang:cancel_timer(Timer),
    S1 = untrack(MRef, S0),
    Outcome = within_budget(Outcome0),
    Done = maps:merge(maps:without([pid, mref, timer], Job),
                      Outcome#{finished => erlang:system_time(millisecond)}),
    settle(Id, Done, S1).

%% A finished job enters the table (and its waiters get their answer); its result's
%% bytes join the budget, which drops the oldest results to make room.
settle(Id, #{finished := Finished, ttl := TtlS} = Done0, #{waiters := W} = S) ->
    Done = Done0#{expires => Finished + round(TtlS * 1000)},
    ets:insert(?TAB, {{job, Id}, Done}),
    case Done of
        #{durable := true} -> persist(Id, Done);
        _ -> ok
    end,
    View = {ok, view(Id, Done)},
    [gen_server:reply(From, View) || From <- maps:get(Id, W, [])],
    S2 = S#{waiters := maps:remove(Id, W)},
    case Done of
        #{result := Result} -> make_room(keep(Id, byte_size(Result), S2));
        _ -> S2
    end.

within_budget(#{status := done, result := Result} = Outcome) ->
    Budget = bbc_config:get(max_result_bytes),
    case byte_size(Result) > Budget of
        false -> Outcome;
        true ->
            #{status => too_large,
              reason => iolist_to_binary(io_lib:format(
                          "the result is ~b bytes of JSON, over the service's budget of ~b bytes "
                          "for finished results (max_result_bytes)", [byte_size(Result), Budget]))}
    end;
within_budget(Outcome) -> Outcome.

keep(Id, Bytes, #{kept := Kept, bytes := Total} = S) ->
    S#{kept := queue:in({Id, Bytes}, Kept), bytes := Total + Bytes}.

make_room(#{kept := Kept, bytes := Total} = S) ->
    case Total > bbc_config:get(max_result_bytes) andalso queue:out(Kept) of
        false -> S;
        {empty, _} -> S;
        {{value, {Id, Bytes}}, Rest} ->
            S2 = S#{kept := Rest, bytes := Total - Bytes},
            case ets:lookup(?TAB, {job, Id}) of
                [{_, #{result := _} = Job}] ->
                    Dropped = (maps:remove(result, Job))#{
                                status => dropped,
                                reason => <<"the result was dropped to keep finished results within the "
                                            "service's budget (max_result_bytes)">>},
                    ets:insert(?TAB, {{job, Id}, Dropped}),
                    case Dropped of
                        #{durable := true} -> persist(Id, Dropped);
                        _ -> ok
                    end;
                _ -> ok
            end,
            make_room(S2)
    end.

%% Remove a job and give back its result's bytes.
drop(Id, #{kept := Kept, bytes := Total} = S) ->
    [{_, Job}] = case ets:lookup(?TAB, {job, Id}) of [] -> [{none, #{}}]; Found -> Found end,
    ets:delete(?TAB, {job, Id}),
    ets:delete(?TAB, {progress, Id}),
    case Job of
        #{durable := true} -> bbc_store:remove(Id);
        _ -> ok
    end,
    case Job of
        #{result := Result} ->
            S#{kept := queue:filter(fun({K, _}) -> K =/= Id end, Kept), bytes := Total - byte_size(Result)};
        _ -> S
    end.

%% Outcomes are written by a short-lived process: a big result never holds this server.
persist(Id, Done) ->
    Outcome = maps:with([status, result, error, reason, op, started, finished, expires, timeout, ttl],
                        Done),
    _ = spawn(fun() -> bbc_store:finished(Id, Outcome) end),
    ok.

%% A recorded job after a restart: its outcome back in the table, or run again from its
%% request, or, when that request no longer parses (the config changed), lost.
recover({Id, Facts, Outcome}, S) ->
    Now = erlang:system_time(millisecond),
    Base = #{client => none, durable => true, op => <<"unknown">>, started => Now, ttl => 0,
             timeout => 0},
    case {Facts, Outcome} of
        {{unreadable, Why}, _} ->
            lost(Id, Base#{ttl => bbc_config:get(result_ttl_s)}, io_lib:format("its record is unreadable (~0p)",
                                                                                [Why]), S);
        {_, #{expires := Expires}} when Expires < Now ->
            bbc_store:remove(Id), S;
        {_, #{status := _} = Done} ->
            ets:insert(?TAB, {{progress, Id}, {0, 0}}),
            Row = maps:merge(Base, Done),
            ets:insert(?TAB, {{job, Id}, Row}),
            case Row of
                #{result := Result} -> make_room(keep(Id, byte_size(Result), S));
                _ -> S
            end;
        {#{body := Body} = F, none} ->
            Plan = try bbc_json:decode(Body) of
                       {ok, Spec} -> bbc_exec:parse(Spec);
                       Bad -> Bad
                   catch Class:Why -> {error, Class, Why}
                   end,
            case Plan of
                {ok, #{async := true} = P} ->
                    logger:notice("bbc_jobs: job ~s was accepted before a restart; running it again", [Id]),
                    start(Id, P#{client => maps:get(client, F, none)}, S);
                Other ->
                    lost(Id, Base#{ttl => bbc_config:get(result_ttl_s)},
                         io_lib:format("its request no longer runs here after a restart (~0P)", [Other, 12]), S)
            end
    end.

lost(Id, Base, Why, S) ->
    logger:warning("bbc_jobs: job ~s is lost: ~s", [Id, Why]),
    ets:insert(?TAB, {{progress, Id}, {0, 0}}),
    Now = erlang:system_time(millisecond),
    Row = Base#{status => lost, finished => Now, expires => Now + round(maps:get(ttl, Base) * 1000),
                reason => iolist_to_binary(["the service restarted and the job could not be run again: ", Why])},
    ets:insert(?TAB, {{job, Id}, Row}),
    persist(Id, Row),
    S.

view(Id, Job) ->
    {Done, Total} = case ets:lookup(?TAB, {progress, Id}) of
                        [{_, P}] -> P;
                        [] -> {0, 0}
                    end,
    Base = maps:with([status, result, error, reason, op, started, finished, timeout], Job),
    Progress = case maps:get(status, Job) of
                   done -> {Total, Total};
                   _ -> {Done, Total}
               end,
    Base#{id => Id, progress => Progress}.
