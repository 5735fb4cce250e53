%%% @doc Top supervisor, children in dependency order: the worker nodes, the job registry
%%% (which parses recovered jobs against the workers), the connection table, and last the
%%% HTTP listener, so nothing takes requests before what serves them is up. rest_for_one
%%% restarts what comes after a crashed child; shutdown runs in reverse: intake first.
-module(bbc_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Children = [#{id => bbc_nodes, start => {bbc_nodes, start_link, []}, shutdown => 30000},
                #{id => bbc_jobs, start => {bbc_jobs, start_link, []}},
                #{id => bbc_conns, start => {bbc_conns, start_link, []}},
                #{id => bbc_http, start => {bbc_http, start_link, []}}],
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10}, Children}}.
