%%% @doc Top supervisor, children in dependency order: the worker nodes, the supervisor of
%%% running jobs, the job registry (which parses recovered jobs against the workers, and to
%%% which every job is linked), the connection table, MochiWeb's clock, and last the HTTP
%%% listener, so nothing takes requests before what serves them is up. rest_for_one
%%% restarts what comes after a crashed child (a registry crash takes its jobs along, never
%%% the workers); shutdown runs in reverse: intake first.
-module(bbc_sup).
-behaviour(supervisor).
-export([start_link/0, start_clock/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc mochiweb_clock linked here; `ignore' when something else in the node runs it already.
-spec start_clock() -> {ok, pid()} | ignore.
start_clock() ->
    case whereis(mochiweb_clock) of
        undefined -> mochiweb_clock:start_link();
        _ -> ignore
    end.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Children = [#{id => bbc_nodes, start => {bbc_nodes, start_link, []}, shutdown => 30000},
                #{id => bbc_job_sup, start => {bbc_job_sup, start_link, []}, type => supervisor},
                #{id => bbc_jobs, start => {bbc_jobs, start_link, []}},
                #{id => bbc_conns, start => {bbc_conns, start_link, []}},
                %% MochiWeb's cached Date header, which the listener needs: supervised here.
                #{id => mochiweb_clock, start => {?MODULE, start_clock, []}, modules => [mochiweb_clock]},
                #{id => bbc_http, start => {bbc_http, start_link, []}},
                %% Last, so first to stop: it drains the requests in flight.
                #{id => bbc_drain, start => {bbc_drain, start_link, []},
                  shutdown => bbc_config:get(drain_ms) + 10000}],
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10}, Children}}.
