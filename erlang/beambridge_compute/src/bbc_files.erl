%%% @doc File access for job functions: only under the folders the operator names.
%%%
%%% A job function that reads files says so in its module (`-bbc_reads_files([{F, A}])');
%%% the service then checks every path a request hands it before the job starts. Paths are
%%% resolved like realpath(3) (symlinks followed, `.' and `..' applied) before the check,
%%% so neither `..' nor a symlink inside a root leads outside it. What this cannot stop is
%%% a local user who can write inside a root and swaps a checked folder for a symlink
%%% between the check and the read: a data root must not be writable by untrusted users.
-module(bbc_files).
-export([resolve/1, check/1, reads_files/2]).

-define(MAX_LINKS, 40).

%% @doc The absolute, symlink-free form of an absolute path. Components that do not exist
%% are kept as written (a later read fails on them anyway).
-spec resolve(binary()) -> {ok, binary()} | {error, atom()}.
resolve(Path) when is_binary(Path) ->
    case unicode:characters_to_list(Path) of
        Chars when is_list(Chars) ->
            case {lists:member(0, Chars), filename:pathtype(Chars)} of
                {true, _} -> {error, nul_in_path};
                {false, absolute} ->
                    try {ok, unicode:characters_to_binary(walk([], split(Chars), 0))}
                    catch throw:Why -> {error, Why}
                    end;
                {false, _} -> {error, not_absolute}
            end;
        _ -> {error, not_utf8}
    end;
resolve(_) -> {error, not_a_string}.

%% @doc `{ok, RealPath}' when `Path' resolves under one of the configured data roots,
%% else `{error, Reason}' with the rule that refused it.
-spec check(term()) -> {ok, binary()} | {error, binary()}.
check(Path) ->
    case bbc_config:get(data_roots) of
        [] ->
            {error, <<"reading files needs data roots named by the operator (data_roots in the "
                      "config, --data-root on compute serve); none are set">>};
        Roots ->
            case resolve(Path) of
                {ok, Real} ->
                    Private = lists:any(fun(P) -> under(Real, P) end,
                                        maps:get(protected, bbc_config:all(), [])),
                    case {Private, lists:any(fun(Root) -> under(Real, Root) end, Roots)} of
                        {true, _} ->
                            {error, <<"the path is one of the service's private files (the cookie, "
                                      "recorded jobs, private_paths), even under a data root">>};
                        {false, true} -> {ok, Real};
                        {false, false} -> {error, <<"the path is outside the data roots (data_roots)">>}
                    end;
                {error, Why} ->
                    {error, <<"a path must be an absolute file name (", (atom_to_binary(Why))/binary,
                              ")">>}
            end
    end.

%% @doc Whether `Mod:Fun/Arity' declares that it reads the files its argument names.
-spec reads_files(module(), {atom(), arity()}) -> boolean().
reads_files(Mod, FA) ->
    Declared = lists:append([L || {bbc_reads_files, L} <- Mod:module_info(attributes)]),
    lists:member(FA, Declared).

under(Real, Root) ->
    Real =:= Root orelse
        binary:longest_common_prefix([Real, <<(trail(Root))/binary>>]) =:= byte_size(trail(Root)).

trail(<<"/">>) -> <<"/">>;
trail(Root) -> <<Root/binary, "/">>.

split(Chars) -> [C || C <- filename:split(Chars), C =/= "/"].

%% Done is the resolved prefix, reversed; Todo the components still to apply.
walk(Done, [], _Links) -> "/" ++ lists:join("/", lists:reverse(Done));
walk(Done, ["." | Todo], Links) -> walk(Done, Todo, Links);
walk([], [".." | Todo], Links) -> walk([], Todo, Links);
walk([_ | Done], [".." | Todo], Links) -> walk(Done, Todo, Links);
walk(_Done, _Todo, Links) when Links > ?MAX_LINKS -> throw(too_many_links);
walk(Done, [Name | Todo], Links) ->
    Here = "/" ++ lists:join("/", lists:reverse([Name | Done])),
    case file:read_link_all(lists:flatten(Here)) of
        {ok, Target} ->
            case filename:pathtype(Target) of
                absolute -> walk([], split(Target) ++ Todo, Links + 1);
                _ -> walk(Done, split(Target) ++ Todo, Links + 1)
            end;
        {error, _NotALinkOrMissing} -> walk([Name | Done], Todo, Links)
    end.
