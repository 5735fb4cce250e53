%%% @doc The service's settings: defaults, overridden by the application environment
%%% (`sys.config': `{beambridge_compute, [{port, 0}, {data_roots, ["/srv/data"]}]}'), in
%%% turn overridden key by key by a JSON config file (the one `beambridge_compute:main/1'
%%% is given, or the app env's `config_file'). Both sources go through the same checks:
%%% unknown keys and bad values are refused, whichever source names them.
%%%
%%% Kept in persistent_term (read on every request, written once at start).
-module(bbc_config).
-export([load/1, read/1, set/1, configure/0, refuse_exposed/1, get/1, all/0, defaults/0,
         client_share/0]).
-export_type([config/0]).

%% The checked settings: every key of defaults/0 (JSON-shaped values: binaries for
%% strings, lists, maps with binary keys), plus `protected'.
-type config() :: #{atom() => term()}.

-define(APP, beambridge_compute).

%% Every limit a hostile client could otherwise push on has a default here (SECURITY.md).
-spec defaults() -> config().
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

%% @doc The settings from the app env and the JSON object in `File' (which wins), checked,
%% refused if exposed without a token, and stored for get/1.
-spec load(file:filename_all() | undefined) -> {ok, config()} | {error, term()}.
load(File) ->
    case read(File) of
        {ok, Config} ->
            case refuse_exposed(Config) of
                ok -> persistent_term:put(?MODULE, Config), {ok, Config};
                {error, _} = Refused -> Refused
            end;
        {error, _} = Error -> Error
    end.

%% @doc What the application's start runs: load/1 with the app env's `config_file'.
-spec configure() -> {ok, config()} | {error, term()}.
configure() -> load(application:get_env(?APP, config_file, undefined)).

%% @doc The checked settings from the app env and `File' (JSON, key by key over the app env),
%% without storing them: what the command line reads before it starts anything.
-spec read(file:filename_all() | undefined) -> {ok, config()} | {error, term()}.
read(File) ->
    Env = [KV || {K, _} = KV <- application:get_all_env(?APP), K =/= config_file],
    try
        FromEnv = maps:from_list([{atom_to_binary(K), from_env(K, V)} || {K, V} <- Env]),
        case read_json(File) of
            {ok, FromFile} -> checked(maps:merge(FromEnv, FromFile));
            {error, _} = Error -> Error
        end
    catch throw:{bad_config, _, _} = Why -> {error, Why}
    end.

read_json(undefined) -> {ok, #{}};
read_json(File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            case bbc_json:decode(Bin) of
                {ok, Map} when is_map(Map) -> {ok, Map};
                {ok, _} -> {error, {config_not_an_object, File}};
                {error, Why} -> {error, {bad_config_json, File, Why}}
            end;
        {error, Why} -> {error, {config_unreadable, File, Why}}
    end.

%% @doc Check `Overrides' (keys atoms or binaries, JSON-shaped values) over the defaults and
%% store the result; the app env becomes exactly `Overrides' (no `config_file'), so the
%% application's next start (configure/0) comes to the same settings. For tests and
%% embedding; the service itself goes through load/1.
-spec set(map()) -> {ok, config()} | {error, term()}.
set(Overrides) ->
    case checked(Overrides) of
        {ok, Config} ->
            _ = application:load(?APP),
            Defaults = defaults(),
            _ = [application:unset_env(?APP, K) || {K, _} <- application:get_all_env(?APP)],
            maps:foreach(fun(K, V) -> application:set_env(?APP, key(K, Defaults), V) end, Overrides),
            persistent_term:put(?MODULE, Config),
            {ok, Config};
        Error -> Error
    end.

checked(Overrides) ->
    Defaults = defaults(),
    try
        Config0 = maps:fold(fun(K, V, Acc) ->
                                    Key = key(K, Defaults),
                                    Acc#{Key => check(Key, V)}
                            end, Defaults, Overrides),
        {ok, Config0#{protected => protected(Config0)}}
    catch throw:{bad_config, _, _} = Why -> {error, Why}
    end.

%% Erlang terms from sys.config into the JSON shapes check/2 takes: strings (charlists) and
%% atoms become binaries, `undefined' null, an IP tuple its text, tokens a proplist or map.
from_env(bind, Ip) when is_tuple(Ip) ->
    case inet:ntoa(Ip) of
        {error, _} -> throw({bad_config, bind, Ip});
        Text -> list_to_binary(Text)
    end;
from_env(tokens, L) when is_list(L) ->
    from_env(tokens, try maps:from_list(L) catch error:_ -> throw({bad_config, tokens, L}) end);
from_env(_Key, V) -> env_value(V).

env_value(V) when is_binary(V); is_number(V); is_boolean(V); V =:= null -> V;
env_value(undefined) -> null;
env_value(V) when is_atom(V) -> atom_to_binary(V);
env_value(V) when is_map(V) -> maps:fold(fun(K, X, Acc) -> Acc#{env_value(K) => env_value(X)} end, #{}, V);
env_value([]) -> [];
env_value(V) when is_list(V) ->
    case io_lib:printable_unicode_list(V) of
        true -> unicode:characters_to_binary(V);
        false -> [env_value(E) || E <- V]
    end;
env_value(V) -> V.  % check/2 refuses what it does not take

%% @doc Anyone who reaches a non-loopback address could run jobs: without a token that takes
%% the operator's explicit word (allow_no_token).
-spec refuse_exposed(config()) -> ok | {error, binary()}.
refuse_exposed(#{bind := Bind, token := Token, tokens := Tokens, allow_no_token := Allow}) ->
    {ok, Ip} = inet:parse_address(binary_to_list(Bind)),
    Loopback = case Ip of
                   {127, _, _, _} -> true;
                   {0, 0, 0, 0, 0, 0, 0, 1} -> true;
                   _ -> false
               end,
    case Loopback orelse Token =/= null orelse map_size(Tokens) > 0 orelse Allow of
        true -> ok;
        false ->
            {error, <<"refusing to serve ", Bind/binary, " without a token: anyone who reaches it could "
                      "run jobs. Set a token (token or tokens in the config, --token or "
                      "$BEAMBRIDGE_COMPUTE_TOKEN), or say allow_no_token (--insecure-no-token)">>}
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

%% @doc One setting (the defaults' when nothing was loaded).
-spec get(atom()) -> term().
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

%% @doc Every setting.
-spec all() -> config().
all() -> persistent_term:get(?MODULE, defaults()).
