%% A port program that lets Python check its External Term Format codec against BEAM's own.
%%
%% Python starts `erl -noshell -s bb_term_port main` and talks over stdin/stdout with 4-byte
%% length-prefixed packets. Each request is one packet, each reply one packet that starts with
%% 0 (ok) or 1 (error, followed by a readable reason).
%%
%%   <<1, Minor, Level, Etf/binary>>   decode Etf with binary_to_term/1, re-encode it with
%%                                     term_to_binary(T, [{minor_version, Minor}] ++ compression)
%%   <<2, Seed:32, Count:32, Size:16, Minor, Level>>
%%                                     generate Count random terms (kept for request 3) and
%%                                     reply <<0, N:32, (Len:32, Etf)*N>>
%%   <<3, (Len:32, Etf)*N>>            Python's re-encodings of the generated terms: for each,
%%                                     check binary_to_term(Etf) =:= the original and that the
%%                                     bytes equal BEAM's own encoding; reply <<0>> or the failures
%%   <<4, Etf/binary>>                 evaluate: Etf is {M, F, Args}; reply the encoded result
%%   <<5, Etf/binary>>                 term_to_binary(binary_to_term(Etf), [local]) (OTP 26+)
%%   <<6, Bin/binary>>                 binary_to_term(Bin) must fail: reply <<0>> if it does,
%%                                     <<1, ...>> with the decoded term if BEAM accepted it
-module(bb_term_port).
-export([main/0, random_term/2]).

%% @doc Serve requests on stdin/stdout until eof, then halt.
-spec main() -> no_return().
main() ->
    Port = open_port({fd, 0, 1}, [binary, {packet, 4}, eof]),
    loop(Port, {[], [], 1, 0}).

loop(Port, State) ->
    receive
        {Port, {data, Request}} ->
            {Reply, State1} = try handle(Request, State)
                              catch Class:Reason:Stack ->
                                  {<<1, (format({Class, Reason, Stack}))/binary>>, State}
                              end,
            Port ! {self(), {command, Reply}},
            loop(Port, State1);
        {Port, eof} ->
            halt(0)
    end.

options(Minor, 0) -> [{minor_version, Minor}];
options(Minor, Level) -> [{minor_version, Minor}, {compressed, Level}].

handle(<<1, Minor, Level, Etf/binary>>, State) ->
    Term = binary_to_term(Etf),
    {<<0, (term_to_binary(Term, options(Minor, Level)))/binary>>, State};
handle(<<2, Seed:32, Count:32, Size:16, Minor, Level>>, _State) ->
    rand:seed(exsss, {Seed, Seed bxor 16#5bd1e995, 7}),
    Terms = [random_term(Size, 0) || _ <- lists:seq(1, Count)],
    Opts = options(Minor, Level),
    Encoded = [term_to_binary(T, Opts) || T <- Terms],
    Body = << <<(byte_size(E)):32, E/binary>> || E <- Encoded >>,
    {<<0, Count:32, Body/binary>>, {Terms, Encoded, Minor, Level}};
handle(<<3, Rest/binary>>, {Terms, Encoded, _Minor, Level} = State) ->
    Back = split(Rest),
    Failures = check(lists:zip3(Terms, Encoded, Back), Level, 0, []),
    case Failures of
        [] -> {<<0>>, State};
        _ -> {<<1, (format(lists:sublist(Failures, 3)))/binary>>, State}
    end;
handle(<<4, Etf/binary>>, State) ->
    {M, F, A} = binary_to_term(Etf),
    {<<0, (term_to_binary(apply(M, F, A)))/binary>>, State};
handle(<<5, Etf/binary>>, State) ->
    %% `local' (OTP 26+) is named at run time: OTP 25's contract for term_to_binary/2
    %% lacks it (there the request fails with badarg, which the caller is told).
    {<<0, (term_to_binary(binary_to_term(Etf), [binary_to_atom(<<"local">>)]))/binary>>, State};
handle(<<6, Bin/binary>>, State) ->
    try binary_to_term(Bin) of
        T -> {<<1, (format({accepted, T}))/binary>>, State}
    catch error:badarg -> {<<0>>, State}
    end.

split(<<>>) -> [];
split(<<Len:32, Etf:Len/binary, Rest/binary>>) -> [Etf | split(Rest)].

check([], _Level, _I, Acc) -> lists:reverse(Acc);
check([{Term, Ours, Theirs} | Rest], Level, I, Acc) ->
    Decoded = try binary_to_term(Theirs) catch C:R -> {decode_failed, C, R} end,
    Same = Decoded =:= Term,
    SameBytes = Level =/= 0 orelse Ours =:= Theirs,
    Acc1 = case Same andalso SameBytes of
               true -> Acc;
               false -> [{I, Term, {beam, Ours}, {python, Theirs}, {equal, Same}} | Acc]
           end,
    check(Rest, Level, I + 1, Acc1).

format(T) -> unicode:characters_to_binary(io_lib:format("~tp", [T])).

%% Random terms: every kind of value BEAM can encode, sized by a budget that shrinks with depth.
-spec random_term(integer(), integer()) -> term().
random_term(Size, Depth) when Size =< 1; Depth > 6 -> leaf();
random_term(Size, Depth) ->
    case rand:uniform(10) of
        N when N =< 4 -> leaf();
        5 -> list_to_tuple(children(Size, Depth));
        6 -> children(Size, Depth);
        7 -> improper(Size, Depth);
        8 -> maps:from_list(pairs(Size, Depth));
        9 -> closure(children(Size, Depth));
        10 -> case rand:uniform(4) of
                  1 -> large_tuple();
                  2 -> large_map();
                  3 -> lists:duplicate(rand:uniform(3) * 30000, rand:uniform(256) - 1);
                  4 -> [leaf() || _ <- lists:seq(1, rand:uniform(300))]
              end
    end.

children(Size, Depth) ->
    [random_term(Size div 3, Depth + 1) || _ <- lists:seq(1, rand:uniform(5) - 1)].

pairs(Size, Depth) ->
    [{random_term(Size div 4, Depth + 1), random_term(Size div 3, Depth + 1)}
     || _ <- lists:seq(1, rand:uniform(6) - 1)].

improper(Size, Depth) ->
    case children(Size, Depth) of
        [] -> [leaf() | leaf_not_list()];
        Items -> Items ++ leaf_not_list()
    end.

leaf_not_list() ->
    case leaf() of
        L when is_list(L) -> tail;
        T -> T
    end.

large_tuple() -> list_to_tuple([leaf() || _ <- lists:seq(1, 256 + rand:uniform(100))]).

large_map() -> maps:from_list([{leaf(), leaf()} || _ <- lists:seq(1, 33 + rand:uniform(60))]).

closure(Free) -> fun(X) -> {X, Free} end.

leaf() ->
    case rand:uniform(24) of
        1 -> rand:uniform(256) - 1;
        2 -> rand:uniform(1 bsl 32) - (1 bsl 31);
        3 -> (rand:uniform(1 bsl 64) - (1 bsl 63)) * 65537;
        4 -> (1 bsl (rand:uniform(3000))) * (rand:uniform(3) - 2) + rand:uniform(1000);
        5 -> rand:uniform() * math:pow(10, rand:uniform(600) - 300) * (rand:uniform(2) * 2 - 3);
        6 -> lists:nth(rand:uniform(6), [0.0, -0.0, 1.0, -1.5, 1.0e300, 5.0e-324]);
        7 -> random_atom();
        8 -> lists:nth(rand:uniform(4), [true, false, undefined, nil]);
        9 -> crypto_bytes(rand:uniform(40) - 1);
        10 -> <<(crypto_bytes(rand:uniform(5) - 1))/binary, (rand:uniform(127)):(rand:uniform(7))>>;
        11 -> [rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(20))];
        12 -> [rand:uniform(16#10000) || _ <- lists:seq(1, rand:uniform(10))];
        13 -> [];
        14 -> {};
        15 -> #{};
        16 -> self();
        17 -> make_ref();
        18 -> hd(erlang:ports());
        19 -> fun lists:map/2;
        20 -> foreign_pid();
        21 -> foreign_ref();
        22 -> foreign_port();
        23 -> <<>>;
        24 -> unicode:characters_to_binary([rand:uniform(16#2000) || _ <- lists:seq(1, 5)])
    end.

random_atom() ->
    Chars = case rand:uniform(4) of
                1 -> [$a + rand:uniform(25) || _ <- lists:seq(1, rand:uniform(12))];
                2 -> [16#C0 + rand:uniform(60) || _ <- lists:seq(1, rand:uniform(12))];
                3 -> [16#400 + rand:uniform(200) || _ <- lists:seq(1, rand:uniform(12))];
                4 -> [16#4E00 + rand:uniform(2000) || _ <- lists:seq(1, 100 + rand:uniform(155))]
            end,
    list_to_atom(Chars).

crypto_bytes(N) -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).

node_atom() ->
    lists:nth(rand:uniform(3), ['py@localhost', 'other@host.example', 'ñodé@höst']).

foreign_pid() ->
    Node = term_to_binary(node_atom(), [{minor_version, 2}]),
    <<131, NodeEnc/binary>> = Node,
    binary_to_term(<<131, 88, NodeEnc/binary, (rand:uniform(1 bsl 20)):32,
                     (rand:uniform(1 bsl 10)):32, (rand:uniform(1 bsl 32) - 1):32>>).

foreign_ref() ->
    <<131, NodeEnc/binary>> = term_to_binary(node_atom(), [{minor_version, 2}]),
    Len = lists:nth(rand:uniform(2), [3, 5]),
    Ids = << <<(rand:uniform(1 bsl 32) - 1):32>> || _ <- lists:seq(1, Len) >>,
    binary_to_term(<<131, 90, Len:16, NodeEnc/binary, (rand:uniform(1 bsl 32) - 1):32, Ids/binary>>).

foreign_port() ->
    <<131, NodeEnc/binary>> = term_to_binary(node_atom(), [{minor_version, 2}]),
    case rand:uniform(2) of
        1 -> binary_to_term(<<131, 89, NodeEnc/binary, (rand:uniform(1 bsl 28)):32,
                              (rand:uniform(1 bsl 32) - 1):32>>);
        2 -> binary_to_term(<<131, 120, NodeEnc/binary, (rand:uniform(1 bsl 60) + (1 bsl 33)):64,
                              (rand:uniform(1 bsl 32) - 1):32>>)
    end.
