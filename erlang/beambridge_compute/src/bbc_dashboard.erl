%%% @doc The dashboard: its static page (plain HTML, CSS and JS from priv/dashboard, no
%%% build step) and `GET /cluster', the JSON view of the cluster that the page and
%%% `beambridge top' poll.
%%%
%%% The page itself holds no data, so it is served without a token (Host and Origin are
%%% still checked); everything it shows comes from `/cluster' and `/jobs', which its script
%%% asks for with the token as a bearer header (kept in sessionStorage, never in a cookie:
%%% see SECURITY.md). Its answers carry a strict Content-Security-Policy: scripts and styles
%%% from the service only, no inline code, no framing.
%%%
%%% `/cluster' is bounded: the nodes, the running jobs (at most max_jobs, plus recovered
%%% ones waiting for a slot), the last `finished' finished jobs (default 50, at most 200),
%%% and 5-second throughput buckets over the last five minutes. It lists only the caller's
%%% jobs (its token's name, or without tokens its peer address), as `/jobs/ID' answers only
%%% for those.
-module(bbc_dashboard).
-export([asset/1, cluster/2]).

-define(FILES, #{"index.html" => "text/html; charset=utf-8",
                 "dashboard.css" => "text/css; charset=utf-8",
                 "dashboard.js" => "text/javascript; charset=utf-8"}).
-define(DEFAULT_FINISHED, 50).
-define(MAX_FINISHED, 200).
-define(MAX_RUNNING, 500).
-define(THROUGHPUT_BUCKETS, 60).

%% @doc A file of the page: `{ok, ContentType, Bytes}' or `{error, Why}' (not one of ours, or
%% the priv folder is missing). Read once, then kept.
-spec asset(string()) -> {ok, string(), binary()} | {error, not_found | {missing, binary()}}.
asset(Name) ->
    case maps:find(Name, ?FILES) of
        error -> {error, not_found};
        {ok, Type} ->
            case persistent_term:get({?MODULE, Name}, undefined) of
                undefined ->
                    Path = filename:join(dir(), Name),
                    case file:read_file(Path) of
                        {ok, Bin} ->
                            persistent_term:put({?MODULE, Name}, Bin),
                            {ok, Type, Bin};
                        {error, _} -> {error, {missing, unicode:characters_to_binary(Path)}}
                    end;
                Bin -> {ok, Type, Bin}
            end
    end.

%% The app's priv/dashboard; from a build whose ebin is not beside the sources (the Python
%% launcher's _build), the sources' own priv/, found from where this module was compiled.
dir() ->
    Installed = case code:priv_dir(beambridge_compute) of
                    {error, _} -> none;
                    Priv -> filename:join(Priv, "dashboard")
                end,
    Source = case proplists:get_value(source, ?MODULE:module_info(compile)) of
                 File when is_list(File) ->
                     filename:join([filename:dirname(filename:dirname(File)), "priv", "dashboard"]);
                 _ -> none
             end,
    case [D || D <- [Installed, Source], D =/= none, filelib:is_regular(filename:join(D, "index.html"))] of
        [Found | _] -> Found;
        [] when Installed =/= none -> Installed;
        [] -> Source
    end.

%% @doc The cluster as `Client' may see it: nodes, its running jobs with progress, its last
%% finished jobs, throughput. `Query' is the request's parsed query string.
-spec cluster(term(), [{string(), string()}]) -> map().
cluster(Client, Query) ->
    Now = erlang:system_time(millisecond),
    Mine = fun(Owner) -> Owner =:= Client end,
    Finished = case proplists:get_value("finished", Query) of
                   undefined -> ?DEFAULT_FINISHED;
                   Text -> try min(?MAX_FINISHED, max(0, list_to_integer(Text)))
                           catch _:_ -> ?DEFAULT_FINISHED
                           end
               end,
    Running = lists:sublist(bbc_jobs:running_jobs(Mine), ?MAX_RUNNING),
    #{node => node(),
      time => Now,
      nodes => bbc_nodes:info(),
      running => [job_json(V, Now) || V <- Running],
      finished => [ended_json(J) || J <- bbc_jobs:recent(Finished, Mine)],
      throughput => #{bucket_ms => 5000, buckets => bbc_metrics:throughput(?THROUGHPUT_BUCKETS)},
      counts => #{running => bbc_jobs:running_count(), finished_kept => bbc_jobs:finished_count(),
                  max_jobs => bbc_config:get(max_jobs)}}.

%% A running job: its progress and how long it has run.
job_json(View, Now) ->
    {Done, Total} = maps:get(progress, View),
    (maps:with([id, status, op, 'fun', started, timeout], View))#{
        progress => #{done => Done, total => Total}, elapsed_ms => Now - maps:get(started, View, Now)}.

%% A job that ended (bbc_jobs' history): how long it ran, and why it failed.
ended_json(Summary) ->
    Json = maps:remove(client, Summary),
    case Summary of
        #{started := Started, finished := End} -> Json#{duration_ms => End - Started};
        _ -> Json
    end.
