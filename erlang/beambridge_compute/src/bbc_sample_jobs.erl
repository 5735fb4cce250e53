%%% @doc Job functions that ship with the service: examples, the demo's word count, and
%%% helpers the test suite and benchmark use. Jobs receive JSON values (binaries for
%%% strings, maps with binary keys, lists, numbers, true/false/null) and return them.
-module(bbc_sample_jobs).
-export([echo/1, add/2, square/1, is_even/1, sum/2, fib/1, sleep/1, sleep_square/1,
         fail/1, where/1, le/2, word_count/1, sum_counts/2, burn/1, nothing/0,
         collatz_longest/2, collatz_fuse/2]).

%% word_count/1 reads the file its argument names: the service lets it read only under the
%% operator's data roots (bbc_files), and refuses it everywhere when none are configured.
-bbc_reads_files([{word_count, 1}]).

%% What each job function does, for `GET /functions' and `beambridge compute jobs' (read by
%% bbc_exec from module_info(attributes); one line each, in the words a caller needs).
-bbc_doc([
    {echo, 1, "Returns its argument unchanged: what JSON makes of a value, and back."},
    {add, 2, "A + B: a call with two numbers."},
    {square, 1, "X * X: map it over numbers."},
    {is_even, 1, "Whether an integer is even: a filter."},
    {sum, 2, "X + Acc: fold (and fuse) numbers into their sum."},
    {fib, 1, "The Nth Fibonacci number (N from 0 to 40), computed the slow recursive way: CPU work."},
    {sleep, 1, "Sleeps Ms milliseconds (0 to 600000), then answers the name of the node it ran on."},
    {sleep_square, 1, "[Ms, X]: sleeps Ms milliseconds, then answers X * X (slow items, to watch "
                      "progress or cancel)."},
    {fail, 1, "Always raises error:{job_failed_on_purpose, X}: how a job's failure reaches you."},
    {where, 1, "[X, Node]: the item and the node that ran it (how a map spreads over the cluster)."},
    {le, 2, "A =< B in Erlang's term order: a sort comparator."},
    {word_count, 1, "Reads the file at an absolute path under a data root and answers [[Word, Count]] "
                    "for its words (runs of ASCII letters, lower-cased): a mapreduce map."},
    {sum_counts, 2, "(Word, Counts) -> the sum of Counts: word_count's mapreduce reduce."},
    {burn, 1, "N rounds of a hash (N up to 100000000), answering the last: CPU-bound benchmark work."},
    {nothing, 0, "Answers \"ok\" at once: the cost of a round trip."},
    {collatz_longest, 2, "Fold over ranges [Lo, Hi] from init [0, 0]: the [Start, Steps] of the start "
                         "in Lo..Hi-1 with the longest Collatz chain (the better of it and the "
                         "accumulator); fuse with collatz_fuse."},
    {collatz_fuse, 2, "The better of two [Start, Steps] (more steps, else the smaller start): "
                      "collatz_longest's fuse."}]).

-spec echo(T) -> T.
echo(X) -> X.

-spec add(number(), number()) -> number().
add(A, B) -> A + B.

-spec square(number()) -> number().
square(X) -> X * X.

-spec is_even(integer()) -> boolean().
is_even(X) -> X rem 2 =:= 0.

%% fold and fuse for a sum.
-spec sum(number(), number()) -> number().
sum(X, Acc) -> X + Acc.

-spec fib(0..40) -> non_neg_integer().
fib(N) when is_integer(N), N >= 0, N =< 40 -> fib_(N).
fib_(N) when N < 2 -> N;
fib_(N) -> fib_(N - 1) + fib_(N - 2).

%% Sleeps `Ms' milliseconds and answers the node it ran on.
-spec sleep(0..600000) -> binary().
sleep(Ms) when is_integer(Ms), Ms >= 0, Ms =< 600000 -> timer:sleep(Ms), atom_to_binary(node()).

-spec sleep_square([number()]) -> number().
sleep_square([Ms, X]) -> timer:sleep(Ms), X * X.

%% Raises with the item in the reason, for error-path tests.
-spec fail(term()) -> no_return().
fail(X) -> erlang:error({job_failed_on_purpose, X}).

-spec where(T) -> [T | binary()].
where(X) -> [X, atom_to_binary(node())].

-spec le(term(), term()) -> boolean().
le(A, B) -> A =< B.

%% The demo's mapper: reads one text file and counts its words (runs of ASCII letters,
%% lower-cased). Returns `[{Word, Count}]'; unreadable files count as empty.
-spec word_count(binary()) -> [{binary(), pos_integer()}].
word_count(Path) when is_binary(Path) ->
    case file:read_file(Path) of
        {ok, Bin} ->
            %% An ets counter table: destructive updates beat rebuilding a large map per word.
            Tab = ets:new(word_count, [set, private]),
            try
                scan(Bin, <<>>, Tab),
                ets:tab2list(Tab)
            after
                ets:delete(Tab)
            end;
        {error, _} -> []
    end.

%% One pass over the bytes, growing the current word in place (appending to a binary
%% is cheap in BEAM); letters are lower-cased by setting bit 0x20.
scan(<<C, Rest/binary>>, Word, Tab) when C >= $a, C =< $z -> scan(Rest, <<Word/binary, C>>, Tab);
scan(<<C, Rest/binary>>, Word, Tab) when C >= $A, C =< $Z -> scan(Rest, <<Word/binary, (C bor 32)>>, Tab);
scan(<<_, Rest/binary>>, <<>>, Tab) -> scan(Rest, <<>>, Tab);
scan(<<_, Rest/binary>>, Word, Tab) -> bump(Word, Tab), scan(Rest, <<>>, Tab);
scan(<<>>, <<>>, _Tab) -> ok;
scan(<<>>, Word, Tab) -> bump(Word, Tab).

bump(Word, Tab) -> ets:update_counter(Tab, Word, 1, {Word, 0}).

%% The demo's reducer (a combiner: its output can be fed back to it).
-spec sum_counts(term(), [number()]) -> number().
sum_counts(_Word, Counts) -> lists:sum(Counts).

%% CPU-bound work for the benchmark: N rounds of a hash.
-spec burn(0..100000000) -> non_neg_integer().
burn(N) when is_integer(N), N >= 0, N =< 100000000 -> burn(N, 0).
burn(0, Acc) -> Acc;
burn(N, Acc) -> burn(N - 1, erlang:phash2({N, Acc}, 1 bsl 27)).

-spec nothing() -> ok.
nothing() -> ok.

%% The demo's job (Project Euler 14): which start below a bound has the longest Collatz
%% chain (n -> n/2 when even, 3n+1 when odd, until 1)? A fold over ranges `[Lo, Hi]': the
%% accumulator is `[Start, Steps]', the smallest start on a tie, so any order of chunks and
%% fuses gives the same answer. A tight integer loop: what BEAM's JIT is much faster at
%% than CPython's interpreter.
-spec collatz_longest([pos_integer()], [non_neg_integer()]) -> [non_neg_integer()].
collatz_longest([Lo, Hi], Best) when is_integer(Lo), is_integer(Hi), Lo >= 1, Hi >= Lo ->
    collatz_fuse(collatz_range(Lo, Hi, 0, 0), Best).

-spec collatz_fuse([non_neg_integer()], [non_neg_integer()]) -> [non_neg_integer()].
collatz_fuse([N1, S1], [_, S2]) when S1 > S2 -> [N1, S1];
collatz_fuse([_, S1], [N2, S2]) when S2 > S1 -> [N2, S2];
collatz_fuse([N1, S], [N2, S]) -> [min(N1, N2), S].

collatz_range(N, Hi, BestN, BestS) when N >= Hi -> [BestN, BestS];
collatz_range(N, Hi, BestN, BestS) ->
    case collatz_steps(N, 0) of
        S when S > BestS -> collatz_range(N + 1, Hi, N, S);
        _ -> collatz_range(N + 1, Hi, BestN, BestS)
    end.

collatz_steps(1, S) -> S;
collatz_steps(N, S) when N band 1 =:= 0 -> collatz_steps(N bsr 1, S + 1);
collatz_steps(N, S) -> collatz_steps(3 * N + 1, S + 1).
