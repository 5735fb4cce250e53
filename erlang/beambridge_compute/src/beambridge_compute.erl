%%% @doc Entry points: start the service from a config file (what `beambridge compute
%%% serve' runs: `erl ... -run beambridge_compute main CONFIG.json') or from Erlang.
%%%
%%% When the config names a `ready_file', the bound port (or the start error) is written
%%% there as JSON once the service answers, so a launcher never has to guess or poll ports.
-module(beambridge_compute).
-export([main/1, start/1, stop/0, url/0]).

main([ConfigFile]) ->
    case start(ConfigFile) of
        {ok, Url} ->
            io:format("beambridge compute: serving ~s (node ~s, ~p workers)~n",
                      [Url, node(), length(bbc_nodes:workers())]);
        {error, Why} ->
            Text = iolist_to_binary(io_lib:format("~0p", [Why])),
            ready(#{error => Text}),
            io:format(standard_error, "beambridge compute: cannot start: ~s~n", [Text]),
            erlang:halt(2)
    end.

start(ConfigFile) ->
    case bbc_config:load(ConfigFile) of
        {ok, Config} ->
            case exposed_without_token(Config) of
                ok -> start_config(Config);
                {error, _} = Refused -> Refused
            end;
        {error, Why} -> {error, Why}
    end.

%% Anyone who reaches a non-loopback address could run jobs: without a token that takes
%% the operator's explicit word (allow_no_token).
exposed_without_token(#{bind := Bind, token := Token, tokens := Tokens, allow_no_token := Allow}) ->
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

start_config(Config) ->
    ok = code:add_pathsa([binary_to_list(P) || P <- maps:get(code_paths, Config)]),
    case maps:get(cookie, Config) of
        null -> ok;
        Cookie when node() =/= nonode@nohost -> erlang:set_cookie(node(), binary_to_atom(Cookie));
        _ -> ok
    end,
    [logger:warning("beambridge compute: job module ~s cannot be loaded", [M])
     || M <- maps:get(job_modules, Config),
        code:ensure_loaded(binary_to_atom(M)) =/= {module, binary_to_atom(M)}],
    case application:ensure_all_started(beambridge_compute) of
        {ok, _} ->
            %% Local workers boot in the background; "ready" means they have had their try.
            _ = bbc_nodes:await_local(60000),
            Port = bbc_http:port(),
            ready(#{port => Port, node => node(), os_pid => list_to_integer(os:getpid()),
                    url => url()}),
            {ok, url()};
        {error, Why} -> {error, Why}
    end.

stop() -> application:stop(beambridge_compute).

url() ->
    Bind = binary_to_list(bbc_config:get(bind)),
    Host = case lists:member($:, Bind) of true -> "[" ++ Bind ++ "]"; false -> Bind end,
    iolist_to_binary(io_lib:format("http://~s:~p", [Host, bbc_http:port()])).

ready(Facts) ->
    case bbc_config:get(ready_file) of
        null -> ok;
        File ->
            Tmp = <<File/binary, ".tmp">>,
            ok = file:write_file(Tmp, bbc_json:encode(Facts)),
            ok = file:rename(Tmp, File)
    end.
