%%% @doc The service's settings: defaults, overridden by a JSON config file.
%%%
%%% Kept in persistent_term (read on every request, written once at start).
-module(bbc_config).
-export([load/1, set/1, get/1, all/0, defaults/0, client_share/0]).

%% Every limit a hostile client could otherwise push on has a default here (SECURITY.md).
defaults() ->
    #{bind => <<"127.0.0.1">>,
      port => 8080,
      token => null,
      %% named bearer tokens ({"name": "token"}): each name is one client for the fair share
      tokens => #{},
      %% binding a non-loopback address without a token is refused unless this is true
      allow_no_token => false,
      %% Host names accepted besides loopback names and the bind address ("*": any)
      allowed_hosts => [],
      %% Origins accepted besides the service's own (a browser page elsewhere)
      allowed_origins => [],
      max_body => 8 * 1024 * 1024,
      %% JSON integers longer than this are refused before conversion (Python's own default)
      max_integer_digits => 4300,
      %% deadlines: all request headers (and keep-alive idle time), a request body, a reply
      header_timeout_ms => 10000,
      body_timeout_ms => 30000,
      %% open connections in all and per peer address; the oldest idle one makes room
      max_connections => 1024,
      max_connections_per_peer => 256,
      max_jobs => 64,
      %% on shutdown, how long requests in flight may take to finish with their own answer
      drain_ms => 10000,
      %% jobs in flight one client (token name, else peer address) may hold; null: half
      max_jobs_per_client => null,
      %% bytes of finished results (and error terms) kept; the oldest are dropped (410)
      max_result_bytes => 256 * 1024 * 1024,
      %% finished jobs remembered; past it the oldest are forgotten (404)
      max_finished_jobs => 10000,
      %% folders job functions that read files may read under; none by default
      data_roots => [],
      %% where accepted background jobs are recorded; null: the user's data dir for the node
      data_dir => null,
      %% folders no job may read even under a data root (the Python launcher names its own)
      private_paths => [],
      job_timeout_ms => 60000,
      max_job_timeout_ms => 3600000,
      result_ttl_s => 300,
      max_result_ttl_s => 86400,
      job_modules => [<<"bbc_sample_jobs">>],
      code_paths => [],
      local_nodes => 0,
      nodes => [],
      cookie => null,
      ready_file => null}.

%% @doc Read a JSON object from `File' over the defaults; unknown keys are refused.
-spec load(file:filename_all() | undefined) -> {ok, map()} | {error, term()}.
load(undefined) -> set(#{});
load(File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            case bbc_json:decode(Bin) of
                {ok, Map} when is_map(Map) -> set(Map);
                {ok, _} -> {error, {config_not_an_object, File}};
                {error, Why} -> {error, {bad_config_json, File, Why}}
            end;
        {error, Why} -> {error, {config_unreadable, File, Why}}
    end.

set(Overrides) ->
    Defaults = defaults(),
    try
        Config0 = maps:fold(fun(K, V, Acc) ->
                                    Key = key(K, Defaults),
                                    Acc#{Key => check(Key, V)}
                            end, Defaults, Overrides),
        Config = Config0#{protected => protected(Config0)},
        persistent_term:put(?MODULE, Config),
        {ok, Config}
    catch throw:{bad_config, _, _} = Why -> {error, Why}
    end.

key(K, Defaults) when is_atom(K) -> key(atom_to_binary(K), Defaults);
key(K, Defaults) ->
    case [A || A <- maps:keys(Defaults), atom_to_binary(A) =:= K] of
        [A] -> A;
        [] -> throw({bad_config, unknown_key, K})
    end.

check(K, V) when K =:= port, is_integer(V), V >= 0, V < 65536 -> V;
check(K, V) when K =:= max_body; K =:= max_jobs; K =:= job_timeout_ms; K =:= max_job_timeout_ms;
                 K =:= local_nodes; K =:= max_result_bytes; K =:= drain_ms ->
    case is_integer(V) andalso V >= 0 of true -> V; false -> throw({bad_config, K, V}) end;
check(K, V) when K =:= max_integer_digits; K =:= header_timeout_ms; K =:= body_timeout_ms;
                 K =:= max_connections; K =:= max_connections_per_peer; K =:= max_finished_jobs ->
    case is_integer(V) andalso V > 0 of true -> V; false -> throw({bad_config, K, V}) end;
check(max_jobs_per_client, V) when V =:= null; is_integer(V), V > 0 -> V;
check(allow_no_token, V) when is_boolean(V) -> V;
check(tokens, V) when is_map(V) ->
    maps:foreach(fun(Name, T) when is_binary(Name), is_binary(T), T =/= <<>> -> ok;
                    (Name, T) -> throw({bad_config, tokens, {Name, T}})
                 end, V),
    V;
check(private_paths, V) when is_list(V) ->
    [case bbc_files:resolve(P) of
         {ok, Real} -> Real;
         {error, Why} -> throw({bad_config, private_paths, {P, Why}})
     end || P <- V];
check(K, V) when K =:= allowed_hosts; K =:= allowed_origins ->
    case is_list(V) andalso lists:all(fun is_binary/1, V) of
        true -> [string:lowercase(H) || H <- V];
        false -> throw({bad_config, K, V})
    end;
check(data_roots, V) when is_list(V) ->
    [case bbc_files:resolve(R) of
         {ok, Real} -> Real;
         {error, Why} -> throw({bad_config, data_roots, {R, Why}})
     end || R <- V];
check(data_dir, V) when V =:= null; is_binary(V), V =/= <<>> -> V;
check(K, V) when K =:= result_ttl_s; K =:= max_result_ttl_s ->
    case is_number(V) andalso V >= 0 of true -> V; false -> throw({bad_config, K, V}) end;
check(K, V) when K =:= job_modules; K =:= code_paths; K =:= nodes ->
    case is_list(V) andalso lists:all(fun is_binary/1, V) of
        true -> V;
        false -> throw({bad_config, K, V})
    end;
check(K, V) when K =:= token; K =:= cookie; K =:= ready_file ->
    case V =:= null orelse (is_binary(V) andalso V =/= <<>>) of
        true -> V;
        false -> throw({bad_config, K, V})
    end;
check(bind, V) when is_binary(V) ->
    case inet:parse_address(binary_to_list(V)) of
        {ok, _} -> V;
        _ -> throw({bad_config, bind, V})
    end;
check(K, V) -> throw({bad_config, K, V}).

get(Key) -> maps:get(Key, all()).

%% What no job may read, data roots or not: the cookie files Erlang reads, the recorded
%% jobs, the ready file, and the folders the operator calls private. Resolved once, here.
protected(#{private_paths := Private, data_dir := DataDir, ready_file := Ready}) ->
    Home = os:getenv("HOME", "/nonexistent"),
    Xdg = os:getenv("XDG_CONFIG_HOME", filename:join(Home, ".config")),
    Candidates = [filename:join(Home, ".erlang.cookie"), filename:join([Xdg, "erlang", ".erlang.cookie"]),
                  filename:join(filename:basedir(user_data, "beambridge_compute"), atom_to_list(node()))]
        ++ [D || D <- [DataDir, Ready], D =/= null],
    Private ++ [R || C <- Candidates, {ok, R} <- [bbc_files:resolve(unicode:characters_to_binary(C))]].

%% @doc Jobs in flight one client may hold (half of max_jobs unless configured).
-spec client_share() -> pos_integer().
client_share() ->
    case ?MODULE:get(max_jobs_per_client) of
        null -> max(1, ?MODULE:get(max_jobs) div 2);
        N -> N
    end.

all() -> persistent_term:get(?MODULE, defaults()).
