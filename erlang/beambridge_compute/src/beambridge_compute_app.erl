%%% @doc Application callback: loads and checks the settings (app env, then the JSON file
%%% the app env's `config_file' names), then everything hangs off bbc_sup; once it answers,
%%% the ready file is written. A bad setting fails the start with its reason.
-module(beambridge_compute_app).
-behaviour(application).
-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    case bbc_config:configure() of
        {ok, Config} ->
            [logger:warning("beambridge compute: job module ~s cannot be loaded", [M])
             || M <- maps:get(job_modules, Config),
                code:ensure_loaded(binary_to_atom(M)) =/= {module, binary_to_atom(M)}],
            case bbc_sup:start_link() of
                {ok, Sup} ->
                    ok = beambridge_compute:announce(60000),
                    {ok, Sup};
                {error, _} = Error -> Error
            end;
        {error, Why} -> {error, {bad_config, Why}}
    end.

-spec stop(term()) -> ok.
stop(_State) -> ok.
