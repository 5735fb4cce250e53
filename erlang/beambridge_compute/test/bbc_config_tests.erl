%%% @doc Settings from the application environment (sys.config) and the JSON file: the
%%% file wins key by key, and both go through the same checks.
-module(bbc_config_tests).
-include_lib("eunit/include/eunit.hrl").

-define(APP, beambridge_compute).

setup() ->
    _ = application:load(?APP),
    clear(),
    Dir = filename:join(filename:basedir(user_cache, "bbc_config_tests"),
                        integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_path(Dir),
    Dir.

cleanup(Dir) ->
    clear(),
    {ok, _} = bbc_config:set(#{}),
    file:del_dir_r(Dir).

clear() -> [application:unset_env(?APP, K) || {K, _} <- application:get_all_env(?APP)].

json(Dir, Text) ->
    File = filename:join(Dir, "config.json"),
    ok = file:write_file(File, Text),
    File.

env(Pairs) -> [ok = application:set_env(?APP, K, V) || {K, V} <- Pairs].

config_test_() ->
    {foreach, fun setup/0, fun cleanup/1,
     [fun(Dir) -> {"app env alone, Erlang terms into JSON shapes", fun() -> env_alone(Dir) end} end,
      fun(Dir) -> {"the JSON file wins key by key", fun() -> file_wins(Dir) end} end,
      fun(Dir) -> {"the same checks for both", fun() -> same_checks(Dir) end} end,
      fun(Dir) -> {"exposed without a token is refused", fun() -> exposed(Dir) end} end,
      fun(Dir) -> {"TLS files: readable, certificate and key together", fun() -> tls_files(Dir) end} end,
      fun(Dir) -> {"a token over plain HTTP off loopback is refused", fun() -> plain_http(Dir) end} end,
      fun(Dir) -> {"dist_optfile must be the node's own", fun() -> dist_optfile(Dir) end} end,
      fun(Dir) -> {"set/1 and the next start agree", fun() -> set_then_configure(Dir) end} end]}.

env_alone(Dir) ->
    {ok, Real} = bbc_files:resolve(list_to_binary(Dir)),
    env([{port, 0}, {bind, {127, 0, 0, 1}}, {data_roots, [Dir]}, {tokens, [{"alice", "tok"}]},
         {job_modules, [bbc_sample_jobs]}, {ready_file, undefined}]),
    {ok, C} = bbc_config:read(undefined),
    ?assertMatch(#{port := 0, bind := <<"127.0.0.1">>, data_roots := [Real],
                   tokens := #{<<"alice">> := <<"tok">>}, job_modules := [<<"bbc_sample_jobs">>],
                   ready_file := null, max_jobs := 64}, C).

file_wins(Dir) ->
    env([{port, 0}, {max_body, 100}, {max_jobs, 3}]),
    File = json(Dir, <<"{\"max_jobs\": 5, \"result_ttl_s\": 7}">>),
    {ok, C} = bbc_config:load(File),
    ?assertMatch(#{port := 0, max_body := 100, max_jobs := 5, result_ttl_s := 7}, C),
    ?assertEqual(5, bbc_config:get(max_jobs)),
    %% what the application's start reads: the file the app env names
    ok = application:set_env(?APP, config_file, File),
    ?assertMatch({ok, #{max_jobs := 5, max_body := 100}}, bbc_config:configure()).

same_checks(Dir) ->
    env([{port, -1}]),
    ?assertEqual({error, {bad_config, port, -1}}, bbc_config:read(undefined)),
    clear(),
    ?assertEqual({error, {bad_config, port, -1}}, bbc_config:read(json(Dir, <<"{\"port\": -1}">>))),
    env([{bogus, 1}]),
    ?assertEqual({error, {bad_config, unknown_key, <<"bogus">>}}, bbc_config:read(undefined)),
    clear(),
    ?assertEqual({error, {bad_config, unknown_key, <<"bogus">>}},
                 bbc_config:read(json(Dir, <<"{\"bogus\": 1}">>))),
    env([{data_roots, [42]}]),
    ?assertMatch({error, {bad_config, data_roots, _}}, bbc_config:read(undefined)),
    clear(),
    ?assertMatch({error, {bad_config_json, _, _}}, bbc_config:read(json(Dir, <<"{">>))),
    ?assertMatch({error, {config_unreadable, _, enoent}},
                 bbc_config:read(filename:join(Dir, "missing.json"))).

exposed(Dir) ->
    env([{bind, "0.0.0.0"}]),
    ?assertMatch({error, <<"refusing to serve 0.0.0.0 without a token", _/binary>>},
                 bbc_config:load(undefined)),
    %% a token in the file makes the env's exposed bind acceptable (given HTTPS, or the word
    %% that plain HTTP is fine here: plain_http/1)
    ?assertMatch({ok, #{bind := <<"0.0.0.0">>, token := <<"t">>}},
                 bbc_config:load(json(Dir, <<"{\"token\": \"t\", \"allow_plain_http\": true}">>))).

set_then_configure(_Dir) ->
    {ok, C} = bbc_config:set(#{port => 0, <<"max_jobs">> => 9}),
    ?assertMatch(#{port := 0, max_jobs := 9}, C),
    ?assertEqual({ok, C}, bbc_config:configure()),
    {ok, D} = bbc_config:set(#{}),
    ?assertMatch(#{port := 8080, max_jobs := 64}, D).

pem(Dir, Name) ->
    File = filename:join(Dir, Name),
    ok = file:write_file(File, <<"not checked here: ssl reads it">>),
    list_to_binary(File).

tls_files(Dir) ->
    Cert = pem(Dir, "cert.pem"),
    Key = pem(Dir, "key.pem"),
    Missing = list_to_binary(filename:join(Dir, "missing.pem")),
    ?assertEqual({error, {bad_config, tls_keyfile, {Missing, enoent}}},
                 bbc_config:read(json(Dir, <<"{\"tls_certfile\": \"", Cert/binary,
                                             "\", \"tls_keyfile\": \"", Missing/binary, "\"}">>))),
    ?assertMatch({error, {bad_config, tls_certfile, 42}}, bbc_config:set(#{tls_certfile => 42})),
    ?assertMatch({error, {bad_config, tls_keyfile, <<"HTTPS needs both", _/binary>>}},
                 bbc_config:set(#{tls_certfile => Cert})),
    ?assertMatch({error, {bad_config, tls_certfile, <<"HTTPS needs both", _/binary>>}},
                 bbc_config:set(#{tls_keyfile => Key, tls_cacertfile => Cert})),
    ?assertMatch({error, {bad_config, tls_certfile, <<"HTTPS needs both", _/binary>>}},
                 bbc_config:set(#{tls_cacertfile => Cert})),
    ?assertNot(bbc_config:https()),
    %% a relative name is made absolute (workers and checks may run elsewhere)
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(Dir),
    try
        {ok, C} = bbc_config:set(#{tls_certfile => <<"cert.pem">>, tls_keyfile => Key}),
        ?assertMatch(#{tls_certfile := Cert, tls_keyfile := Key, tls_cacertfile := null}, C)
    after ok = file:set_cwd(Cwd)
    end,
    ?assert(bbc_config:https()),
    %% no job reads the key, data roots or not
    {ok, RealKey} = bbc_files:resolve(Key),
    ?assert(lists:member(RealKey, bbc_config:get(protected))),
    ?assertMatch({error, {bad_config, allow_plain_http, <<"yes">>}},
                 bbc_config:set(#{allow_plain_http => <<"yes">>})).

plain_http(Dir) ->
    Cert = pem(Dir, "cert.pem"),
    Key = pem(Dir, "key.pem"),
    Refused = fun(Overrides) ->
                      {ok, C} = bbc_config:set(Overrides),
                      bbc_config:refuse_exposed(C)
              end,
    ?assertMatch({error, <<"refusing to serve 10.1.2.3 over plain HTTP with a token: the token would "
                           "travel in clear", _/binary>>},
                 Refused(#{bind => <<"10.1.2.3">>, token => <<"t">>})),
    ?assertMatch({error, <<"refusing to serve :: over plain HTTP", _/binary>>},
                 Refused(#{bind => <<"::">>, tokens => #{<<"alice">> => <<"t">>}})),
    %% HTTPS, the operator's word, loopback, or no token to leak: served
    ?assertEqual(ok, Refused(#{bind => <<"0.0.0.0">>, token => <<"t">>, tls_certfile => Cert,
                               tls_keyfile => Key})),
    ?assertEqual(ok, Refused(#{bind => <<"0.0.0.0">>, token => <<"t">>, allow_plain_http => true})),
    ?assertEqual(ok, Refused(#{bind => <<"127.0.0.2">>, token => <<"t">>})),
    ?assertEqual(ok, Refused(#{bind => <<"::1">>, token => <<"t">>})),
    ?assertEqual(ok, Refused(#{bind => <<"0.0.0.0">>, allow_no_token => true})),
    %% the start path says so too, before anything listens
    env([{bind, "10.1.2.3"}, {token, "t"}]),
    ?assertMatch({error, <<"refusing to serve 10.1.2.3 over plain HTTP", _/binary>>},
                 bbc_config:load(undefined)).

dist_optfile(Dir) ->
    %% This node runs plain distribution (inet_tcp): a configured optfile is not its own.
    Optfile = pem(Dir, "dist.conf"),
    {ok, C} = bbc_config:set(#{dist_optfile => Optfile}),
    ?assertMatch({error, <<"dist_optfile is ", _/binary>>}, bbc_config:refuse_dist(C)),
    {error, Why} = bbc_config:refuse_dist(C),
    ?assertNotEqual(nomatch, binary:match(Why, <<"-proto_dist inet_tls -ssl_dist_optfile">>)),
    env([{dist_optfile, binary_to_list(Optfile)}]),
    ?assertMatch({error, <<"dist_optfile is ", _/binary>>}, bbc_config:load(undefined)),
    {ok, Plain} = bbc_config:set(#{}),
    ?assertEqual(ok, bbc_config:refuse_dist(Plain)).
