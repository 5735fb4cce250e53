%% The classic examples of the old uWSGI Erlang plugin, and small helpers the tests drive.
-module(bbw_examples).
-export([hello/0, echo_start/0, echo_start/1, echo_loop/1, echo/1,
         add/2, slow/1, node_name/0,
         send/2, request/3, gen_request/3]).

%% uwsgitest:hello/0 of the plugin's documentation.
hello() -> 'hello world !'.

echo(Message) -> {i_am_echo, Message}.

%% uwsgiecho: a registered loop that answers every message to the registered name
%% `useless' on the sender's node ({useless, Node} ! ...), as the plugin's example did.
%% The sender's node is taken from a `{From, Msg}' pid when given, else from `nodes(hidden)'.
echo_start() -> echo_start(echoer).
echo_start(Name) ->
    case whereis(Name) of
        undefined -> ok;
        Old -> unregister(Name), exit(Old, kill)
    end,
    Pid = spawn(?MODULE, echo_loop, [Name]),
    register(Name, Pid),
    ok.

echo_loop(Name) ->
    receive
        {reply_to, Node, Message} ->
            {useless, Node} ! echo(Message);
        Message ->
            [{useless, N} ! echo(Message) || N <- nodes(hidden)]
    end,
    echo_loop(Name).

add(A, B) -> A + B.

slow(Ms) -> timer:sleep(Ms), {slept, Ms}.

node_name() -> node().

%% Send Msg to Dest (a pid, a name, or {Name, Node}); used to reach a Python receiver.
send(Dest, Msg) -> Dest ! Msg, ok.

%% {self(), Req} to Dest, wait for the answer.
request(Dest, Req, Timeout) ->
    Dest ! {self(), Req},
    receive Answer -> {ok, Answer} after Timeout -> timeout end.

%% gen_server:call to a Python receiver.
gen_request(Dest, Req, Timeout) ->
    try gen_server:call(Dest, Req, Timeout) of
        Answer -> {ok, Answer}
    catch exit:{timeout, _} -> timeout
    end.
