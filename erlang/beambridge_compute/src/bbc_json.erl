%%% @doc JSON in and out, and the mapping between JSON and Erlang terms.
%%%
%%% Decoding gives binaries for strings, maps with binary keys, lists, numbers and the
%%% atoms true/false/null. Encoding accepts those plus what job functions commonly return:
%%% atoms become strings, tuples become arrays, map keys that are not strings are printed,
%%% binaries that are not UTF-8 become `{"$base64": ...}', and pids/refs/funs are printed.
%%% Lists are always arrays (never guessed to be strings): return binaries for text.
%%%
%%% jiffy (Debian's erlang-jiffy, a NIF) is used when it loads; mochijson2 otherwise.
-module(bbc_json).
-export([decode/1, encode/1, encode_with/3, to_json/1, backend/0, long_number/2]).
-export_type([json/0]).

%% The JSON subset terms are turned into before encoding.
-type json() :: null | boolean() | number() | binary() | [json()] | #{binary() => json()}.

-spec decode(binary()) -> {ok, term()} | {error, binary()}.
decode(Bin) ->
    try
        case backend() of
            jiffy -> {ok, jiffy:decode(Bin, [return_maps, dedupe_keys])};
            mochijson2 -> {ok, from_mochi(mochijson2:decode(Bin))}
        end
    catch
        _:{error, {Pos, Why}} when is_integer(Pos) -> {error, at(Why, Pos)};
        _:{Pos, Why} when is_integer(Pos) -> {error, at(Why, Pos)};
        _:Why -> {error, iolist_to_binary(io_lib:format("~0P", [Why, 8]))}
    end.

%% @doc The byte offset of the first JSON number in `Bin' with more than `Max' digits, or
%% `none'. A decoder turns digits into an integer in time quadratic in their count, so a
%% request is refused on this check before it is decoded. Digit runs inside strings are
%% fine; PCRE finds candidate runs fast, and only then is the text scanned for strings.
-spec long_number(binary(), pos_integer()) -> non_neg_integer() | none.
long_number(Bin, Max) ->
    case re:run(Bin, ["[0-9]{", integer_to_list(Max + 1), "}"], [{capture, none}]) of
        nomatch -> none;
        match -> scan(Bin, 0, out, 0, Max)
    end.

%% States: out (between tokens), str (inside a string), esc (after a backslash in one).
scan(Bin, Pos, _State, _Run, _Max) when Pos >= byte_size(Bin) -> none;
scan(Bin, Pos, State, Run, Max) ->
    C = binary:at(Bin, Pos),
    case State of
        str when C =:= $\\ -> scan(Bin, Pos + 1, esc, 0, Max);
        str when C =:= $" -> scan(Bin, Pos + 1, out, 0, Max);
        str -> scan(Bin, Pos + 1, str, 0, Max);
        esc -> scan(Bin, Pos + 1, str, 0, Max);
        out when C =:= $" -> scan(Bin, Pos + 1, str, 0, Max);
        out when C >= $0, C =< $9, Run >= Max -> Pos - Run;
        out when C >= $0, C =< $9 -> scan(Bin, Pos + 1, out, Run + 1, Max);
        out -> scan(Bin, Pos + 1, out, 0, Max)
    end.

%% @doc Encode `Map' with `Key' set to `Raw', JSON text encoded earlier (a job's result is
%% encoded by the job, within its time limit and size budget, never again per request).
-spec encode_with(map(), atom(), iodata()) -> iodata().
encode_with(Map, Key, Raw) ->
    Rest = iolist_to_binary(encode(maps:remove(Key, Map))),
    Head = [$", atom_to_binary(Key), $", $:, Raw],
    case Rest of
        <<"{}">> -> [${, Head, $}];
        <<${, Tail/binary>> -> [${, Head, $,, Tail]
    end.

at(Why, Pos) -> iolist_to_binary(io_lib:format("~p at byte ~p", [Why, Pos])).

-spec encode(term()) -> iodata().
encode(Term) ->
    Json = to_json(Term),
    case backend() of
        jiffy -> jiffy:encode(Json);
        mochijson2 -> mochijson2:encode(to_mochi(Json))
    end.

-spec backend() -> jiffy | mochijson2.
backend() ->
    case persistent_term:get({?MODULE, backend}, undefined) of
        undefined ->
            Backend = try jiffy:decode(<<"[1]">>) of [1] -> jiffy
                      catch _:_ -> mochijson2
                      end,
            persistent_term:put({?MODULE, backend}, Backend),
            Backend;
        Backend -> Backend
    end.

%% @doc Any term into the JSON subset (maps with binary keys, lists, numbers, binaries).
-spec to_json(term()) -> json().
to_json(X) when is_integer(X); is_float(X) -> X;
to_json(X) when X =:= true; X =:= false; X =:= null -> X;
to_json(X) when is_atom(X) -> atom_to_binary(X);
to_json(X) when is_binary(X) ->
    case unicode:characters_to_binary(X) of
        X -> X;
        _ -> #{<<"$base64">> => base64:encode(X)}
    end;
to_json(X) when is_list(X) -> list_to_json(X);
to_json(X) when is_tuple(X) -> [to_json(E) || E <- tuple_to_list(X)];
to_json(X) when is_map(X) -> maps:fold(fun(K, V, Acc) -> Acc#{key(K) => to_json(V)} end, #{}, X);
to_json(X) -> iolist_to_binary(io_lib:format("~0p", [X])).

list_to_json([]) -> [];
list_to_json([H | T]) when is_list(T) -> [to_json(H) | list_to_json(T)];
list_to_json([H | T]) -> [to_json(H), to_json(T)].

key(K) when is_binary(K) -> to_json(K);
key(K) when is_atom(K) -> atom_to_binary(K);
key(K) when is_integer(K) -> integer_to_binary(K);
key(K) -> iolist_to_binary(io_lib:format("~0p", [K])).

from_mochi({struct, Pairs}) -> maps:from_list([{K, from_mochi(V)} || {K, V} <- Pairs]);
from_mochi(L) when is_list(L) -> [from_mochi(E) || E <- L];
from_mochi(X) -> X.

to_mochi(M) when is_map(M) -> {struct, [{K, to_mochi(V)} || {K, V} <- maps:to_list(M)]};
to_mochi(L) when is_list(L) -> [to_mochi(E) || E <- L];
to_mochi(X) -> X.
