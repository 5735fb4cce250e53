%%% @doc Application callback: everything hangs off bbc_sup.
-module(beambridge_compute_app).
-behaviour(application).
-export([start/2, stop/1]).

start(_Type, _Args) -> bbc_sup:start_link().

stop(_State) -> ok.
