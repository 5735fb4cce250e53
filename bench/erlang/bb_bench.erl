%% The Erlang-to-Erlang side of bench/node_bench.py: each function does N operations against
%% Node and returns the elapsed microseconds.
-module(bb_bench).
-export([seq_rpc/5, seq_erpc/5, pipelined_rpc/6, concurrent_rpc/6, start_echo/1, echo_seq/3, echo_inflight/4,
         start_tcp_echo/0, tcp_rtt/2]).

time_us(Fun) ->
    T0 = erlang:monotonic_time(microsecond),
    Fun(),
    erlang:monotonic_time(microsecond) - T0.

seq_rpc(Node, M, F, A, N) ->
    time_us(fun() -> seq_loop(Node, M, F, A, N) end).

%% N sequential erpc:call/4 (a spawn request and its reply; rpc:call goes through rex instead).
seq_erpc(Node, M, F, A, N) ->
    time_us(fun() -> erpc_loop(Node, M, F, A, N) end).

erpc_loop(_, _, _, _, 0) -> ok;
erpc_loop(Node, M, F, A, N) -> _ = erpc:call(Node, M, F, A), erpc_loop(Node, M, F, A, N - 1).

seq_loop(_, _, _, _, 0) -> ok;
seq_loop(Node, M, F, A, N) -> _ = rpc:call(Node, M, F, A), seq_loop(Node, M, F, A, N - 1).

%% N calls with at most Window outstanding (erpc:send_request / receive_response).
pipelined_rpc(Node, M, F, A, N, Window) ->
    time_us(fun() -> window(Node, M, F, A, N, Window, []) end).

window(_, _, _, _, 0, _, Out) -> [erpc:receive_response(R) || R <- Out], ok;
window(Node, M, F, A, N, W, Out) when length(Out) >= W ->
    [R | Rest] = Out,
    _ = erpc:receive_response(R),
    window(Node, M, F, A, N, W, Rest);
window(Node, M, F, A, N, W, Out) ->
    window(Node, M, F, A, N - 1, W, Out ++ [erpc:send_request(Node, M, F, A)]).

%% C processes each doing N div C sequential calls.
concurrent_rpc(Node, M, F, A, N, C) ->
    Self = self(),
    time_us(fun() ->
        Pids = [spawn_link(fun() -> seq_loop(Node, M, F, A, N div C), Self ! {done, self()} end)
                || _ <- lists:seq(1, C)],
        [receive {done, P} -> ok end || P <- Pids]
    end).

start_echo(Name) ->
    Pid = spawn(fun loop/0),
    register(Name, Pid),
    Pid.

loop() -> receive {From, Msg} -> From ! Msg, loop() end.

echo_seq(Dest, Msg, N) ->
    time_us(fun() -> echo_seq_loop(Dest, Msg, N) end).

echo_seq_loop(_, _, 0) -> ok;
echo_seq_loop(Dest, Msg, N) -> Dest ! {self(), Msg}, receive Msg -> ok end, echo_seq_loop(Dest, Msg, N - 1).

%% N echoes with Window messages in flight.
echo_inflight(Dest, Msg, N, Window) ->
    time_us(fun() ->
        First = min(Window, N),
        [Dest ! {self(), Msg} || _ <- lists:seq(1, First)],
        inflight(Dest, Msg, N - First, First)
    end).

inflight(_, _, 0, 0) -> ok;
inflight(Dest, Msg, Left, Out) ->
    receive Msg -> ok end,
    case Left of
        0 -> inflight(Dest, Msg, 0, Out - 1);
        _ -> Dest ! {self(), Msg}, inflight(Dest, Msg, Left - 1, Out)
    end.

%% A plain TCP echo ({packet, 4}) on loopback, no distribution: the floor under every row.
%% Serves one connection at a time, each in its own process; returns the port.
start_tcp_echo() ->
    Self = self(),
    spawn(fun() ->
        {ok, L} = gen_tcp:listen(0, [binary, {active, false}, {packet, 4}, {ip, {127, 0, 0, 1}},
                                     {nodelay, true}, {reuseaddr, true}]),
        {ok, Port} = inet:port(L),
        Self ! {tcp_echo, Port},
        tcp_accept(L)
    end),
    receive {tcp_echo, Port} -> Port after 5000 -> error(no_tcp_echo) end.

tcp_accept(L) ->
    {ok, S} = gen_tcp:accept(L),
    Pid = spawn(fun() -> receive go -> tcp_echo(S) end end),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! go,
    tcp_accept(L).

tcp_echo(S) ->
    case gen_tcp:recv(S, 0) of
        {ok, B} -> ok = gen_tcp:send(S, B), tcp_echo(S);
        _ -> gen_tcp:close(S)
    end.

%% N round trips of a 60-byte frame to the echo on Port of this host.
tcp_rtt(Port, N) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}, {packet, 4},
                                                       {nodelay, true}]),
    Frame = binary:copy(<<"x">>, 60),
    T = time_us(fun() -> tcp_loop(S, Frame, N) end),
    gen_tcp:close(S),
    T.

tcp_loop(_, _, 0) -> ok;
tcp_loop(S, Frame, N) -> ok = gen_tcp:send(S, Frame), {ok, _} = gen_tcp:recv(S, 0), tcp_loop(S, Frame, N - 1).
