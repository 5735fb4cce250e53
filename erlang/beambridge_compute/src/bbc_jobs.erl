%%% @doc The job registry: starts jobs, enforces the in-flight limit and each job's
%%% deadline, answers status and long-poll waits, cancels, and expires finished results.
%%%
%%% Each job runs in its own process whose whole outcome travels in its exit reason, so a
%%% job's end is one 'DOWN' message here. Status is kept in a public ets table that HTTP
%%% handlers read directly; only this server writes job states. Progress is written by the
%%% job's coordinator under a separate key, so it never races a state change.
-module(bbc_jobs).
-behaviour(gen_server).

-export([start_link/0, submit/1, get/1, wait/2, cancel/1, forget/1, running/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TAB, bbc_jobs).
-define(SWEEP_MS, 250).

start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Start a job from a checked plan: `{ok, Id}' or `{error, busy}'.
submit(Plan) -> gen_server:call(?MODULE, {submit, Plan}).

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
    %% running: MonitorRef => Id; waiters: Id => [From]
    {ok, #{running => #{}, waiters => #{}}}.

handle_call({submit, Plan}, _From, #{running := Running} = S) ->
    case map_size(Running) >= bbc_config:get(max_jobs) of
        true -> {reply, {error, busy}, S};
        false ->
            Id = string:lowercase(binary:encode_hex(crypto:strong_rand_bytes(8))),
            Total = maps:get(total, Plan),
            ets:insert(?TAB, {{progress, Id}, {0, Total}}),
            Progress = fun(Done, _ChunkTotal) -> ets:insert(?TAB, {{progress, Id}, {Done, Total}}) end,
            {Pid, MRef} = spawn_monitor(fun() -> run_job(Plan, Progress) end),
            Timer = erlang:send_after(maps:get(timeout, Plan), self(), {deadline, Id}),
            Job = #{status => running, pid => Pid, mref => MRef, timer => Timer,
                    ttl => maps:get(ttl, Plan), timeout => maps:get(timeout, Plan),
                    op => maps:get(op, Plan), started => erlang:system_time(millisecond)},
            ets:insert(?TAB, {{job, Id}, Job}),
            {reply, {ok, Id}, S#{running := Running#{MRef => Id}}}
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
    ets:delete(?TAB, {job, Id}),
    ets:delete(?TAB, {progress, Id}),
    {reply, ok, S};
handle_call(running, _From, #{running := R} = S) ->
    {reply, map_size(R), S}.

handle_cast(_Msg, S) -> {noreply, S}.

handle_info({'DOWN', MRef, process, _Pid, Reason}, #{running := Running} = S)
  when is_map_key(MRef, Running) ->
    {Id, Rest} = maps:take(MRef, Running),
    [{_, Job}] = ets:lookup(?TAB, {job, Id}),
    _ = erlang:cancel_timer(maps:get(timer, Job)),
    Outcome = case Reason of
                  {bbc_job, ok, Result} -> #{status => done, result => Result};
                  {bbc_job, raised, Class, Why, Stack} ->
                      #{status => failed, error => {Class, Why, Stack}};
                  Other -> #{status => failed, error => {exit, Other, []}}
              end,
    finish(Id, Job, Outcome, S#{running := Rest});
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
    Now = erlang:monotonic_time(millisecond),
    Expired = ets:select(?TAB, [{{{job, '$1'}, #{expires => '$2'}}, [{'<', '$2', Now}], ['$1']}]),
    [begin ets:delete(?TAB, {job, Id}), ets:delete(?TAB, {progress, Id}) end || Id <- Expired],
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {noreply, S};
handle_info(_Msg, S) ->
    {noreply, S}.

terminate(_Reason, #{running := Running}) ->
    [exit(Pid, kill) || {_, #{pid := Pid}} <- [hd(ets:lookup(?TAB, {job, Id}))
                                                 || Id <- maps:values(Running)]],
    ok.

%%% ------------------------------------------------------------------ internals

run_job(Plan, Progress) ->
    Result = try {bbc_job, ok, bbc_exec:run(Plan, Progress)}
             catch Class:Reason:Stack -> {bbc_job, raised, Class, Reason, Stack}
             end,
    exit(Result).

%% Kill a running job (its coordinator and workers follow) and record why it ended.
stop_job(Id, #{pid := Pid, mref := MRef, timer := Timer} = Job, Status, #{running := R} = S) ->
    erlang:demonitor(MRef, [flush]),
    exit(Pid, kill),
    _ = erlang:cancel_timer(Timer),
    {noreply, S2} = finish(Id, Job, #{status => Status}, S#{running := maps:remove(MRef, R)}),
    S2.

finish(Id, Job, Outcome, #{waiters := W} = S) ->
    Ttl = round(maps:get(ttl, Job) * 1000),
    Done = maps:merge(maps:without([pid, mref, timer], Job),
                      Outcome#{finished => erlang:system_time(millisecond),
                               expires => erlang:monotonic_time(millisecond) + Ttl}),
    ets:insert(?TAB, {{job, Id}, Done}),
    View = {ok, view(Id, Done)},
    [gen_server:reply(From, View) || From <- maps:get(Id, W, [])],
    {noreply, S#{waiters := maps:remove(Id, W)}}.

view(Id, Job) ->
    {Done, Total} = case ets:lookup(?TAB, {progress, Id}) of
                        [{_, P}] -> P;
                        [] -> {0, 0}
                    end,
    Base = maps:with([status, result, error, op, started, finished, timeout], Job),
    Progress = case maps:get(status, Job) of
                   done -> {Total, Total};
                   _ -> {Done, Total}
               end,
    Base#{id => Id, progress => Progress}.
