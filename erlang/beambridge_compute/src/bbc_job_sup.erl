%%% @doc The supervisor of running jobs: temporary children, one per job, started by
%%% bbc_jobs (which links to each, so jobs die with the registry that accounts for them).
%%% Jobs end with `{shutdown, _}' reasons, which neither this supervisor nor proc_lib
%%% reports: an outcome is not a crash.
-module(bbc_job_sup).
-behaviour(supervisor).
-export([start_link/0, start_job/1, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc A job process waiting for its plan (see bbc_jobs).
-spec start_job(map()) -> {ok, pid()} | {error, term()}.
start_job(Meta) -> supervisor:start_child(?MODULE, [Meta]).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Job = #{id => job, start => {bbc_jobs, start_job, []}, restart => temporary,
            shutdown => brutal_kill, type => worker, modules => [bbc_jobs]},
    {ok, {#{strategy => simple_one_for_one, intensity => 0, period => 1}, [Job]}}.
