%%% @doc Top supervisor. Order matters: the job registry and the worker nodes are up before
%%% the HTTP listener takes requests; rest_for_one restarts the listener when either restarts.
-module(bbc_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Children = [#{id => bbc_jobs, start => {bbc_jobs, start_link, []}},
                #{id => bbc_nodes, start => {bbc_nodes, start_link, []}, shutdown => 30000},
                #{id => bbc_http, start => {bbc_http, start_link, []}}],
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10}, Children}}.
