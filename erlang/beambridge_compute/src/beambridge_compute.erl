%%% @doc Entry points: start the service from a config file (what `beambridge compute
%%% serve' runs: `erl ... -run beambridge_compute main CONFIG.json') or from Erlang, or boot
%%% it as part of a release (the application's own start, settings from sys.config).
%%%
%%% Settings come from the application environment and the JSON file, which wins key by
%%% key (bbc_config). When they name a `ready_file', the bound port (or the start error) is
%%% written there as JSON once the service answers, so a launcher never has to guess or
%%% poll ports.
%%%
%%% Only main/1 touches the node itself: it adds the config's `code_paths' and sets its
%%% `cookie'. start/1 and the application's start change nothing outside the application
%%% (in a release, job modules belong in the release and the cookie in vm.args).
-module(beambridge_compute).
-export([main/1, start/1, stop/0, url/0, announce/1]).

-define(APP, beambridge_compute).

%% @doc The command line: start, say where it serves, or write the error and halt(2).
-spec main([string()]) -> ok | no_return().
main([ConfigFile]) ->
    case bbc_config:read(ConfigFile) of
        {ok, Config} ->
            prepare_node(Config),
            case start(ConfigFile) of
                {ok, Url} ->
                    io:format("beambridge compute: serving ~s (node ~s, ~p workers)~n",
                              [Url, node(), length(bbc_nodes:workers())]);
                {error, Why} -> cannot_start(Why, maps:get(ready_file, Config))
            end;
        {error, Why} -> cannot_start(Why, null)
    end.

cannot_start(Why, ReadyFile) ->
    %% A refusal is a sentence (bbc_config's): written as one, not as an Erlang binary.
    Text = case is_binary(Why) of
               true -> Why;
               false -> iolist_to_binary(io_lib:format("~0p", [Why]))
           end,
    _ = write_ready(ReadyFile, #{error => Text}),
    io:format(standard_error, "beambridge compute: cannot start: ~s~n", [Text]),
    erlang:halt(2).

%% The node-wide side effects the command line asks for (never done by start/1).
prepare_node(Config) ->
    ok = code:add_pathsa([binary_to_list(P) || P <- maps:get(code_paths, Config)]),
    case maps:get(cookie, Config) of
        null -> ok;
        Cookie when node() =/= nonode@nohost -> erlang:set_cookie(node(), binary_to_atom(Cookie));
        _ -> ok
    end.

%% @doc Start the application with `ConfigFile' (JSON) over its app env; `undefined': the
%% app env alone. Settings are checked first, so a bad one is a plain `{error, Why}'.
-spec start(file:filename_all() | undefined) -> {ok, binary()} | {error, term()}.
start(ConfigFile) ->
    case bbc_config:read(ConfigFile) of
        {ok, Config} ->
            case {bbc_config:refuse_exposed(Config), bbc_config:refuse_dist(Config)} of
                {ok, ok} -> start_app(ConfigFile);
                {{error, _} = Refused, _} -> Refused;
                {ok, {error, _} = Refused} -> Refused
            end;
        {error, _} = Error -> Error
    end.

start_app(ConfigFile) ->
    case application:load(?APP) of
        ok -> ok;
        {error, {already_loaded, ?APP}} -> ok
    end,
    ok = application:set_env(?APP, config_file, ConfigFile),
    case application:ensure_all_started(?APP) of
        {ok, _} -> {ok, url()};
        {error, Why} -> {error, Why}
    end.

%% @doc Stop the application (its workers, jobs and listener; drains requests first).
-spec stop() -> ok | {error, term()}.
stop() -> application:stop(?APP).

%% @doc Where the service answers, e.g. `<<"http://127.0.0.1:8080">>' (`https://' with TLS).
-spec url() -> binary().
url() ->
    Bind = binary_to_list(bbc_config:get(bind)),
    Host = case lists:member($:, Bind) of true -> "[" ++ Bind ++ "]"; false -> Bind end,
    Scheme = case bbc_config:https() of true -> "https"; false -> "http" end,
    iolist_to_binary(io_lib:format("~s://~s:~p", [Scheme, Host, bbc_http:port()])).

%% @doc Once the service answers (and its local workers have had their try): write the
%% ready file, if one is configured. Run by the application's start.
-spec announce(non_neg_integer()) -> ok.
announce(WorkersMs) ->
    %% Local workers boot in the background; "ready" means they have had their try.
    _ = bbc_nodes:await_local(WorkersMs),
    write_ready(bbc_config:get(ready_file),
                #{port => bbc_http:port(), node => node(), os_pid => list_to_integer(os:getpid()),
                  url => url()}).

write_ready(null, _Facts) -> ok;
write_ready(File, Facts) ->
    Tmp = <<File/binary, ".tmp">>,
    ok = file:write_file(Tmp, bbc_json:encode(Facts)),
    ok = file:rename(Tmp, File).
