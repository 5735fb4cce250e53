%%% @doc Application callback: the examples' long-lived processes hang off bbw_sup.
-module(bbw_app).
-behaviour(application).
-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) -> bbw_sup:start_link().

-spec stop(term()) -> ok.
stop(_State) -> ok.
