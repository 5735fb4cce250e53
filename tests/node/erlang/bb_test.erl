%% Helpers the integration tests run inside a real Erlang node.
-module(bb_test).
-behaviour(gen_server).
-export([start_echo/1, echo_loop/0, call_py/4, erpc_py/4, linker/1, trapper/2, monitorer/2,
         big/1, send_after/3, start_server/1, init/1, handle_call/3, handle_cast/2, handle_info/2,
         connect_many/2, register_and_sleep/2, collect/2, burst/2,
         spawn_linked_py/4, kill_py_call/4, erpc_many/4, rex_many/4, spawn_kill_many/4,
         in_background/5, erpc_seq/4, warm_many/4, gated/5, kill_when_running/4,
         send_then_disconnect/2, call_then_disconnect/4]).

start_echo(Name) ->
    Pid = spawn(fun echo_loop/0),
    register(Name, Pid),
    Pid.

echo_loop() ->
    receive
        {From, Msg} -> From ! Msg, echo_loop();
        stop -> ok
    end.

call_py(Node, M, F, A) -> rpc:call(Node, M, F, A).

erpc_py(Node, M, F, A) ->
    try {ok, erpc:call(Node, M, F, A, 10000)}
    catch C:R -> {C, R}
    end.

%% A process linked to Pid (not trapping): dies when Pid dies; exits with Reason on {exit, Reason}.
linker(Pid) ->
    Self = self(),
    Child = spawn(fun() -> link(Pid), Self ! linked, receive {exit, R} -> exit(R) end end),
    receive linked -> Child after 5000 -> timeout end.

%% A trapping process linked to Pid that forwards what it gets to ReportTo.
trapper(Pid, ReportTo) ->
    Self = self(),
    Child = spawn(fun() -> process_flag(trap_exit, true), link(Pid), Self ! linked, forward(ReportTo) end),
    receive linked -> Child after 5000 -> timeout end.

%% A process monitoring Target that forwards what it gets to ReportTo.
monitorer(Target, ReportTo) ->
    Self = self(),
    Child = spawn(fun() -> Ref = monitor(process, Target), Self ! {monitoring, Ref}, forward(ReportTo) end),
    receive {monitoring, Ref} -> {Child, Ref} after 5000 -> timeout end.

forward(To) ->
    receive
        {exit, R} -> exit(R);
        Msg -> To ! {forwarded, self(), Msg}, forward(To)
    end.

big(N) -> binary:copy(<<"x">>, N).

send_after(Ms, Dest, Msg) ->
    spawn(fun() -> timer:sleep(Ms), Dest ! Msg end), ok.

start_server(Name) ->
    {ok, Pid} = gen_server:start({local, Name}, ?MODULE, [], []),
    Pid.

init([]) -> {ok, []}.
handle_call(Req, _From, S) -> {reply, {echo, Req}, S}.
handle_cast({tell, To, Msg}, S) -> To ! Msg, {noreply, S}.
handle_info(_, S) -> {noreply, S}.

%% Connect to every node in Nodes at once (for the simultaneous-connect test).
connect_many(Nodes, _) -> [net_kernel:connect_node(N) || N <- Nodes].

%% Register the calling process (an rpc's) under Name and sleep: a test can see it killed.
register_and_sleep(Name, Ms) -> register(Name, self()), timer:sleep(Ms), done.

%% A registered process that keeps {Tag, N} messages in arrival order and hands the list to
%% whoever sends {get, From}.
collect(Name, _) ->
    Pid = spawn(fun() -> collect_loop([]) end),
    register(Name, Pid),
    Pid.

collect_loop(Acc) ->
    receive
        {get, From} -> From ! {collected, lists:reverse(Acc)}, collect_loop([]);
        Msg -> collect_loop([Msg | Acc])
    end.

%% N rounds of a message and an exit signal to Pid, in that order on one connection.
burst(Pid, N) ->
    lists:foreach(fun(I) -> Pid ! {msg, I}, exit(Pid, {sig, I}) end, lists:seq(1, N)).

%% erpc:execute_call spawned on Node with a link and a monitor from a process trapping exits:
%% {LinkReason, DownReason} with the call's reference replaced by 'ref'.
spawn_linked_py(Node, M, F, A) ->
    Self = self(),
    spawn(fun() ->
        process_flag(trap_exit, true),
        Ref = make_ref(),
        Req = spawn_request(Node, erpc, execute_call, [Ref, M, F, A], [link, monitor]),
        receive {spawn_reply, Req, ok, Pid} -> ok end,
        R1 = receive {'EXIT', Pid, X} -> X after 10000 -> no_exit end,
        R2 = receive {'DOWN', Req, process, Pid, Y} -> Y after 10000 -> no_down end,
        Strip = fun(T) when is_tuple(T), element(1, T) =:= Ref -> setelement(1, T, ref); (T) -> T end,
        Self ! {linked_py, Strip(R1), Strip(R2)}
    end),
    receive {linked_py, R1, R2} -> {R1, R2} after 20000 -> timeout end.

%% Start erpc:execute_call on Node, kill the process at once: the DOWN reason.
kill_py_call(Node, M, F, A) ->
    Req = spawn_request(Node, erpc, execute_call, [make_ref(), M, F, A], [monitor]),
    receive {spawn_reply, Req, ok, Pid} -> exit(Pid, kill) end,
    receive {'DOWN', Req, process, _, Reason} -> Reason after 10000 -> timeout end.

%% N erpc calls M:F(I) to Node, all in flight at once (erpc:send_request): the results in order,
%% each {ok, Value} or {Class, Reason}.
erpc_many(Node, M, F, N) ->
    Reqs = [erpc:send_request(Node, M, F, [I]) || I <- lists:seq(1, N)],
    [try {ok, erpc:receive_response(R, 20000)} catch C:E -> {C, E} end || R <- Reqs].

%% N erpc spawn requests for M:F(I) to Node, each killed as soon as it is spawned: per request
%% ok (spawned, then killed) or the spawn error (system_limit).
spawn_kill_many(Node, M, F, N) ->
    [begin
         Req = spawn_request(Node, erpc, execute_call, [make_ref(), M, F, [I]], [monitor]),
         receive
             {spawn_reply, Req, ok, Pid} ->
                 exit(Pid, kill),
                 receive {'DOWN', Req, process, _, _} -> ok after 10000 -> timeout end;
             {spawn_reply, Req, error, Reason} -> Reason
         after 10000 -> timeout
         end
     end || I <- lists:seq(1, N)].

%% N old-style rpc calls M:F(I) to Node's rex, all in flight at once: the replies in order.
rex_many(Node, M, F, N) ->
    Self = self(),
    GL = group_leader(),
    Pids = [spawn(fun() -> Self ! {self(), gen_server:call({rex, Node}, {call, M, F, [I], GL}, 20000)} end)
            || I <- lists:seq(1, N)],
    [receive {P, Reply} -> Reply after 30000 -> timeout end || P <- Pids].

%% Run M:F(A...) in a process of its own and send {Tag, Result} to ReplyTo: the Python caller's
%% rpc returns at once, so its connection is read by the node's loop (or a worker) meanwhile.
in_background(ReplyTo, Tag, M, F, A) ->
    spawn(fun() -> ReplyTo ! {Tag, apply(M, F, A)} end),
    ok.

%% N erpc calls M:F(I) to Node, one after the other: the results, each {ok, V} or {C, R}.
erpc_seq(Node, M, F, N) ->
    [try {ok, erpc:call(Node, M, F, [I], 10000)} catch C:E -> {C, E} end || I <- lists:seq(1, N)].

%% Three calls M:warm(I) (I = 1..3, so that a worker thread reads), then erpc_many(Node, M, F, N).
warm_many(Node, M, F, N) ->
    _ = erpc_seq(Node, M, warm, 3),
    erpc_many(Node, M, F, N).

%% Three calls M:Quick(I) (I = 1..3, so that a worker thread reads), then M:Slow() in flight
%% and N calls M:Quick(I) one after the other meanwhile: {QuickResults, SlowResult}.
gated(Node, M, Slow, Quick, N) ->
    _ = erpc_seq(Node, M, Quick, 3),
    R = erpc:send_request(Node, M, Slow, []),
    Quicks = erpc_seq(Node, M, Quick, N),
    {Quicks, try {ok, erpc:receive_response(R, 20000)} catch C:E -> {C, E} end}.

%% Three calls M:warm(I), then erpc:execute_call M:F(A) on Node, killed once M:started() says
%% it runs: the DOWN reason, then (after M:finished() says F returned) any second DOWN for it.
kill_when_running(Node, M, F, A) ->
    _ = erpc_seq(Node, M, warm, 3),
    Req = spawn_request(Node, erpc, execute_call, [make_ref(), M, F, A], [monitor]),
    receive {spawn_reply, Req, ok, Pid} -> ok end,
    ok = erpc:call(Node, M, started, [], 10000),
    exit(Pid, kill),
    Reason = receive {'DOWN', Req, process, _, R} -> R after 10000 -> timeout end,
    ok = erpc:call(Node, M, finished, [], 10000),
    Again = receive {'DOWN', Req, process, _, R2} -> {again, R2} after 300 -> none end,
    {Reason, Again}.

%% From a process of its own (the rpc's answer goes first): N messages {msg, I} to To, then
%% drop the connection to To's node at once.
send_then_disconnect(To, N) ->
    spawn(fun() ->
                  timer:sleep(50),
                  [To ! {msg, I} || I <- lists:seq(1, N)],
                  erlang:disconnect_node(node(To))
          end),
    ok.

%% From a process of its own: erpc M:F(A...) on Node, then drop the connection to it at once.
call_then_disconnect(Node, M, F, A) ->
    spawn(fun() ->
                  timer:sleep(50),
                  _ = erpc:call(Node, M, F, A, 5000),
                  erlang:disconnect_node(Node)
          end),
    ok.
