%%% @doc The service's settings: defaults, overridden by the application environment
%%% (`sys.config': `{beambridge_compute, [{port, 0}, {data_roots, ["/srv/data"]}]}'), in
%%% turn overridden key by key by a JSON config file (the one `beambridge_compute:main/1'
%%% is given, or the app env's `config_file'). Both sources go through the same checks:
%%% unknown keys and bad values are refused, whichever source names them.
%%%
%%% Kept in persistent_term (read on every request, written once at start).
-module(bbc_config).
-export([load/1, read/1, set/1, configure/0, refuse_exposed/1, refuse_dist/1, get/1, all/0,
         defaults/0, client_share/0, https/0]).
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
      %% HTTPS when both are set (PEM files); tls_cacertfile: the CA chain sent with the certificate
      tls_certfile => null,
      tls_keyfile => null,
      tls_cacertfile => null,
      %% a token on a non-loopback address over plain HTTP is refused unless this is true
      allow_plain_http => false,
      %% the ssl_dist_optfile this node runs (-proto_dist inet_tls); local workers run the same
      dist_optfile => null,
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
            case {refuse_exposed(Config), refuse_dist(Config)} of
                {ok, ok} -> persistent_term:put(?MODULE, Config), {ok, Config};
                {{error, _} = Refused, _} -> Refused;
                {ok, {error, _} = Refused} -> Refused
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
        ok = tls_pair(Config0),
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
%% the operator's explicit word (allow_no_token); and anyone on the path could read a token
%% sent over plain HTTP: that takes HTTPS (tls_certfile and tls_keyfile) or the operator's
%% explicit word (allow_plain_http).
-spec refuse_exposed(config()) -> ok | {error, binary()}.
refuse_exposed(#{bind := Bind, token := Token, tokens := Tokens, allow_no_token := AllowNoToken,
                 tls_certfile := Cert, allow_plain_http := AllowPlain}) ->
    {ok, Ip} = inet:parse_address(binary_to_list(Bind)),
    Loopback = case Ip of
                   {127, _, _, _} -> true;
                   {0, 0, 0, 0, 0, 0, 0, 1} -> true;
                   _ -> false
               end,
    HasToken = Token =/= null orelse map_size(Tokens) > 0,
    if
        Loopback -> ok;
        not HasToken, not AllowNoToken ->
            {error, <<"refusing to serve ", Bind/binary, " without a token: anyone who reaches it could "
                      "run jobs. Set a token (token or tokens in the config, --token or "
                      "$BEAMBRIDGE_COMPUTE_TOKEN), or say allow_no_token (--insecure-no-token)">>};
        HasToken, Cert =:= null, not AllowPlain ->
            {error, <<"refusing to serve ", Bind/binary, " over plain HTTP with a token: the token "
                      "would travel in clear. Serve HTTPS (tls_certfile and tls_keyfile in the config, "
                      "--certfile and --keyfile), or say allow_plain_http (--insecure-plain-http)">>};
        true -> ok
    end.

%% @doc A configured dist_optfile is the one this node runs: its local workers start with the
%% node's own distribution arguments, so the two must agree (and the node's command line,
%% not the config, decides how the node itself speaks).
-spec refuse_dist(config()) -> ok | {error, binary()}.
refuse_dist(#{dist_optfile := null}) -> ok;
refuse_dist(#{dist_optfile := File}) ->
    Tls = case init:get_argument(proto_dist) of
              {ok, Protos} -> lists:any(fun(P) -> lists:suffix("_tls", P) end, lists:append(Protos));
              error -> false
          end,
    Own = case init:get_argument(ssl_dist_optfile) of
              {ok, [[F | _] | _]} -> filename:absname(F);
              _ -> none
          end,
    case {node() =/= nonode@nohost andalso Tls, Own =:= unicode:characters_to_list(File)} of
        {true, true} -> ok;
        _ ->
            {error, <<"dist_optfile is ", File/binary, " but this node does not run it: start the "
                      "node with -name ... -proto_dist inet_tls -ssl_dist_optfile ", File/binary,
                      " (beambridge compute serve --tls-optfile does)">>}
    end.

%% Certificate and key go together; a CA chain without them is a mistake, not plain HTTP.
tls_pair(#{tls_certfile := null, tls_keyfile := null, tls_cacertfile := null}) -> ok;
tls_pair(#{tls_certfile := Cert, tls_keyfile := Key}) when Cert =/= null, Key =/= null -> ok;
tls_pair(#{tls_certfile := Cert}) ->
    throw({bad_config, case Cert of null -> tls_certfile; _ -> tls_keyfile end,
           <<"HTTPS needs both tls_certfile and tls_keyfile (tls_cacertfile is optional)">>}).

%% @doc Whether the service serves HTTPS.
-spec https() -> boolean().
https() -> ?MODULE:get(tls_certfile) =/= null.

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
check(K, V) when is_boolean(V), K =:= allow_no_token orelse K =:= allow_plain_http -> V;
check(K, V) when K =:= tls_certfile; K =:= tls_keyfile; K =:= tls_cacertfile; K =:= dist_optfile ->
    readable(K, V);
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

%% null, or the absolute name of a file this node can read (a missing key file is better
%% found now than at the first TLS handshake).
readable(_K, null) -> null;
readable(K, V) when is_binary(V), V =/= <<>> ->
    File = unicode:characters_to_binary(filename:absname(V)),
    case file:open(File, [read, raw]) of
        {ok, Fd} -> ok = file:close(Fd), File;
        {error, Why} -> throw({bad_config, K, {V, Why}})
    end;
readable(K, V) -> throw({bad_config, K, V}).

%% @doc One setting (the defaults' when nothing was loaded).
-spec get(atom()) -> term().
get(Key) -> maps:get(Key, all()).

%% What no job may read, data roots or not: the cookie files Erlang reads, the recorded
%% jobs, the ready file, the TLS keys (and the optfile naming the distribution's), and the
%% folders the operator calls private. Resolved once, here.
protected(#{private_paths := Private, data_dir := DataDir, ready_file := Ready, tls_keyfile := Key,
            dist_optfile := Optfile}) ->
    Home = os:getenv("HOME", "/nonexistent"),
    Xdg = os:getenv("XDG_CONFIG_HOME", filename:join(Home, ".config")),
    Candidates = [filename:join(Home, ".erlang.cookie"), filename:join([Xdg, "erlang", ".erlang.cookie"]),
                  filename:join(filename:basedir(user_data, "beambridge_compute"), atom_to_list(node()))]
        ++ [D || D <- [DataDir, Ready, Key, Optfile], D =/= null] ++ dist_keyfiles(Optfile),
    Private ++ [R || C <- Candidates, {ok, R} <- [bbc_files:resolve(unicode:characters_to_binary(C))]].

dist_keyfiles(null) -> [];
dist_keyfiles(Optfile) ->
    case file:consult(Optfile) of
        {ok, [Sections]} when is_list(Sections) ->
            [unicode:characters_to_binary(K) || {_Side, Opts} <- Sections, is_list(Opts),
                                                {keyfile, K} <- Opts, io_lib:char_list(K) orelse is_binary(K)];
        _ -> []  % Erlang itself refuses an optfile it cannot read: the node would not have started
    end.

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
