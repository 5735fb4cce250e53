%% The classic examples of the old uWSGI Erlang plugin, and small helpers the tests drive.
-module(bbw_examples).
-export([hello/0, echo_start/0, echo_start/1, echo/1,
         add/2, slow/1, node_name/0,
         send/2, request/3, gen_request/3]).

%% A pid, a registered name, or {Name, Node}: where a message can be sent.
-type dest() :: pid() | atom() | {atom(), node()}.
-export_type([dest/0]).

%% @doc uwsgitest:hello/0 of the plugin's documentation.
-spec hello() -> 'hello world !'.
hello() -> 'hello world !'.

%% @doc What the echo server answers.
-spec echo(Message) -> {i_am_echo, Message}.
echo(Message) -> {i_am_echo, Message}.

%% @doc uwsgiecho: start (or restart) the echo server registered as `echoer' (bbw_echo),
%% supervised by beambridge_web's bbw_sup (the application is started if it is not).
-spec echo_start() -> ok | {error, term()}.
echo_start() -> echo_start(echoer).

-spec echo_start(atom()) -> ok | {error, term()}.
echo_start(Name) ->
    %% A node answers over distribution before its boot is over (kernel is not yet
    %% "started"): an rpc that comes that early waits for the boot, briefly.
    started([kernel, stdlib], 100),
    %% application:start/1, not ensure_all_started/1: the optional mnesia is left alone
    %% (bbw_store:setup/1 starts it in the folder it is given).
    case application:start(beambridge_web) of
        ok -> ok;
        {error, {already_started, beambridge_web}} -> ok
    end,
    case bbw_sup:start_echo(Name) of
        {ok, _} -> ok;
        {error, _} = Error -> Error
    end.

-spec add(number(), number()) -> number().
add(A, B) -> A + B.

-spec slow(non_neg_integer()) -> {slept, non_neg_integer()}.
slow(Ms) -> timer:sleep(Ms), {slept, Ms}.

-spec node_name() -> node().
node_name() -> node().

%% @doc Send Msg to Dest; used to reach a Python receiver.
-spec send(dest(), term()) -> ok.
send(Dest, Msg) -> Dest ! Msg, ok.

%% @doc `{Pid, Req}' to Dest (the old plugin's protocol: the answer is sent back to Pid, with
%% no tag), waiting up to `Timeout' for it. Pid is a short-lived proxy whose only address
%% is in that message, so whatever reaches it is the answer: the caller's own mailbox is
%% never searched for an untagged message (a stray one is not taken for the answer), and a
%% late answer goes to a dead proxy instead of piling up here.
-spec request(dest(), term(), timeout()) -> {ok, term()} | timeout.
request(Dest, Req, Timeout) ->
    Caller = self(),
    Tag = make_ref(),
    {Proxy, Mon} = spawn_monitor(fun() -> proxy(Caller, Tag, Dest, Req) end),
    receive
        {Tag, Answer} ->
            erlang:demonitor(Mon, [flush]),
            {ok, Answer};
        {'DOWN', Mon, process, Proxy, Why} ->
            erlang:error({request_failed, Why})
    after Timeout ->
            exit(Proxy, kill),
            erlang:demonitor(Mon, [flush]),
            receive {Tag, _} -> ok after 0 -> ok end,  % answered just as time ran out
            timeout
    end.

proxy(Caller, Tag, Dest, Req) ->
    CallerMon = erlang:monitor(process, Caller),
    Dest ! {self(), Req},
    receive
        {'DOWN', CallerMon, process, Caller, _} -> ok;  % nobody waits any more
        Answer -> Caller ! {Tag, Answer}
    end.

%% @doc gen_server:call to a Python receiver.
-spec gen_request(dest(), term(), timeout()) -> {ok, term()} | timeout.
gen_request(Dest, Req, Timeout) ->
    try gen_server:call(Dest, Req, Timeout) of
        Answer -> {ok, Answer}
    catch exit:{timeout, _} -> timeout
    end.

%% The applications beambridge_web needs, not the whole boot (init:get_status/0): an -eval
%% runs before the boot counts as over, and would wait here in vain.
started(_Apps, 0) -> ok;
started(Apps, Tries) ->
    Running = [App || {App, _, _} <- application:which_applications()],
    case Apps -- Running of
        [] -> ok;
        _ -> timer:sleep(50), started(Apps, Tries - 1)
    end.
