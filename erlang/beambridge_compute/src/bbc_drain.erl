%%% @doc Orderly shutdown of the HTTP road: the last child of bbc_sup, so the first to stop.
%%%
%%% When the service stops (SIGTERM, application:stop) new requests are answered 503 and
%%% requests in flight get up to `drain_ms' to finish with their own answer; those still
%%% waiting then (a synchronous job, a long poll) are told to answer now: a job's client
%%% gets 503 with the reason and the job stops, a long poll gets the job's current status.
%%% Only then do the listener, the jobs and, last, the worker nodes go.
-module(bbc_drain).
-behaviour(gen_server).
-export([start_link/0, init/1, handle_call/3, handle_cast/2, terminate/2]).

-define(POLL_MS, 50).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec init([]) -> {ok, #{}}.
init([]) ->
    process_flag(trap_exit, true),  % so terminate/2 runs on shutdown
    _ = persistent_term:erase({bbc_http, draining}),
    {ok, #{}}.

-spec handle_call(term(), gen_server:from(), S) -> {reply, {error, unknown_call}, S}.
handle_call(_Request, _From, S) -> {reply, {error, unknown_call}, S}.

-spec handle_cast(term(), S) -> {noreply, S}.
handle_cast(_Msg, S) -> {noreply, S}.

-spec terminate(term(), term()) -> ok.
terminate(_Reason, _S) ->
    persistent_term:put({bbc_http, draining}, true),
    Grace = erlang:monotonic_time(millisecond) + bbc_config:get(drain_ms),
    wait_idle(Grace, false).

%% Until no request is in flight; once the grace is over, waiting ones are told to answer.
wait_idle(Grace, Told) ->
    case bbc_conns:busy() of
        [] -> ok;
        Busy ->
            Now = erlang:monotonic_time(millisecond),
            if
                Now >= Grace + 5000 -> ok;   % what still runs is cut off with the listener
                Now >= Grace, not Told -> [P ! bbc_drain || P <- Busy], wait_idle(Grace, true);
                true -> timer:sleep(?POLL_MS), wait_idle(Grace, Told)
            end
    end.
