%%% @doc bbc_files: path resolution (symlinks, `..', loops) and the data-root rule, on a
%%% real file tree made for the test; bbc_json's long-number scan.
-module(bbc_files_tests).
-include_lib("eunit/include/eunit.hrl").

tree() ->
    Base = filename:join(filename:basedir(user_cache, "bbc_files_tests"),
                         integer_to_list(erlang:unique_integer([positive]))),
    Root = filename:join(Base, "root"),
    Outside = filename:join(Base, "outside"),
    ok = filelib:ensure_path(filename:join(Root, "sub")),
    ok = filelib:ensure_path(Outside),
    ok = file:write_file(filename:join(Root, "a.txt"), <<"a">>),
    ok = file:write_file(filename:join(Outside, "s.txt"), <<"s">>),
    ok = file:make_symlink(filename:join(Outside, "s.txt"), filename:join(Root, "abs_out")),
    ok = file:make_symlink("../outside/s.txt", filename:join(Root, "rel_out")),
    ok = file:make_symlink("sub", filename:join(Root, "to_sub")),
    ok = file:make_symlink("loop2", filename:join(Root, "loop1")),
    ok = file:make_symlink("loop1", filename:join(Root, "loop2")),
    {Base, list_to_binary(Root), list_to_binary(Outside)}.

cleanup({Base, _, _}) -> file:del_dir_r(Base).

resolve_test_() ->
    {setup, fun tree/0, fun cleanup/1,
     fun({_, Root, Outside}) ->
             R = fun(P) -> bbc_files:resolve(<<Root/binary, P/binary>>) end,
             [?_assertEqual({ok, <<Root/binary, "/a.txt">>}, R(<<"/a.txt">>)),
              ?_assertEqual({ok, <<Root/binary, "/a.txt">>}, R(<<"/sub/../a.txt">>)),
              ?_assertEqual({ok, <<Root/binary, "/a.txt">>}, R(<<"/./sub/./../a.txt">>)),
              ?_assertEqual({ok, <<Outside/binary, "/s.txt">>}, R(<<"/abs_out">>)),
              ?_assertEqual({ok, <<Outside/binary, "/s.txt">>}, R(<<"/rel_out">>)),
              ?_assertEqual({ok, <<Root/binary, "/sub/x">>}, R(<<"/to_sub/x">>)),
              ?_assertEqual({ok, <<Root/binary, "/missing/x">>}, R(<<"/missing/x">>)),
              ?_assertEqual({error, too_many_links}, R(<<"/loop1">>)),
              ?_assertEqual({ok, <<"/">>}, bbc_files:resolve(<<"/../../..">>)),
              ?_assertEqual({error, not_absolute}, bbc_files:resolve(<<"a.txt">>)),
              ?_assertEqual({error, nul_in_path}, bbc_files:resolve(<<"/etc/passwd", 0, "x">>)),
              ?_assertEqual({error, not_utf8}, bbc_files:resolve(<<"/", 255, 254>>)),
              ?_assertEqual({error, not_a_string}, bbc_files:resolve(42))]
     end}.

check_test_() ->
    {setup, fun tree/0,
     fun(T) -> {ok, _} = bbc_config:set(#{}), cleanup(T) end,
     fun({_, Root, _Outside}) ->
             [?_assertMatch({error, <<"reading files needs data roots", _/binary>>},
                            begin {ok, _} = bbc_config:set(#{}),
                                  bbc_files:check(<<Root/binary, "/a.txt">>) end),
              ?_test(begin
                         {ok, _} = bbc_config:set(#{data_roots => [Root]}),
                         ?assertEqual({ok, <<Root/binary, "/a.txt">>},
                                      bbc_files:check(<<Root/binary, "/to_sub/../a.txt">>)),
                         ?assertMatch({error, <<"the path is outside", _/binary>>},
                                      bbc_files:check(<<Root/binary, "/abs_out">>)),
                         ?assertMatch({error, <<"the path is outside", _/binary>>},
                                      bbc_files:check(<<Root/binary, "/../outside/s.txt">>)),
                         %% a sibling whose name starts like the root is not under it
                         ?assertMatch({error, _}, bbc_files:check(<<Root/binary, "x/a.txt">>)),
                         ?assertEqual({ok, Root}, bbc_files:check(Root))
                     end)]
     end}.

long_number_test_() ->
    [?_assertEqual(none, bbc_json:long_number(<<"[12345]">>, 5)),
     ?_assertEqual(1, bbc_json:long_number(<<"[123456]">>, 5)),
     ?_assertEqual(none, bbc_json:long_number(<<"[\"123456\"]">>, 5)),
     ?_assertEqual(none, bbc_json:long_number(<<"[\"a\\\"123456\"]">>, 5)),
     ?_assertEqual(10, bbc_json:long_number(<<"[\"a\\\\\",1, 123456]">>, 5)),
     ?_assertEqual(none, bbc_json:long_number(<<"[1.23456,123e45678]">>, 5))].

%% Two writers of one job's outcome at once (a big one first): never a torn or mixed file.
store_writers_test() ->
    Dir = filename:join(filename:basedir(user_cache, "bbc_store_tests"),
                        integer_to_list(erlang:unique_integer([positive]))),
    {ok, _} = bbc_config:set(#{data_dir => list_to_binary(Dir)}),
    _ = bbc_store:dir(),
    Big = #{status => done, result => binary:copy(<<"x">>, 20000000)},
    Small = #{status => dropped, reason => <<"r">>},
    Self = self(),
    [spawn(fun() -> Self ! {W, bbc_store:finished(<<"job1">>, O)} end) || {W, O} <- [{big, Big}, {small, Small}]],
    Results = [receive {W, R} -> R after 20000 -> timeout end || W <- [big, small]],
    ?assertEqual([ok, ok], Results),
    [{<<"job1">>, none, Outcome}] = bbc_store:recover(),
    ?assert(Outcome =:= Big orelse Outcome =:= Small),
    ?assertEqual([], filelib:wildcard(filename:join([Dir, "jobs", "*.tmp"]))),
    {ok, _} = bbc_config:set(#{}),
    file:del_dir_r(Dir).
