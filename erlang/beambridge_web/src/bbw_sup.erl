%%% @doc The supervisor of beambridge_web's long-lived processes: the echo servers that
%%% bbw_examples:echo_start/1 adds, one child per registered name.
-module(bbw_sup).
-behaviour(supervisor).
-export([start_link/0, start_echo/1, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc (Re)start the echo server registered as `Name': ours is replaced, a process of
%% anyone else's holding the name is left alone and reported.
-spec start_echo(atom()) -> {ok, pid()} | {error, {name_taken, atom(), pid()} | term()}.
start_echo(Name) when is_atom(Name) ->
    Id = {echo, Name},
    _ = supervisor:terminate_child(?MODULE, Id),
    _ = supervisor:delete_child(?MODULE, Id),
    case supervisor:start_child(?MODULE, #{id => Id, start => {bbw_echo, start_link, [Name]},
                                           shutdown => 2000, modules => [bbw_echo]}) of
        {ok, Pid} -> {ok, Pid};
        {error, {{already_started, Pid}, _Child}} -> {error, {name_taken, Name, Pid}};
        {error, Why} -> {error, Why}
    end.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, []}}.
