%%% @doc The service's settings: defaults, overridden by a JSON config file.
%%%
%%% Kept in persistent_term (read on every request, written once at start).
-module(bbc_config).
-export([load/1, set/1, get/1, all/0, defaults/0]).

defaults() ->
    #{bind => <<"127.0.0.1">>,
      port => 8080,
      token => null,
      max_body => 8 * 1024 * 1024,
      max_jobs => 64,
      job_timeout_ms => 60000,
      max_job_timeout_ms => 3600000,
      result_ttl_s => 300,
      max_result_ttl_s => 86400,
      job_modules => [<<"bbc_sample_jobs">>],
      code_paths => [],
      local_nodes => 0,
      nodes => [],
      cookie => null,
      ready_file => null}.

%% @doc Read a JSON object from `File' over the defaults; unknown keys are refused.
-spec load(file:filename_all() | undefined) -> {ok, map()} | {error, term()}.
load(undefined) -> set(#{});
load(File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            case bbc_json:decode(Bin) of
                {ok, Map} when is_map(Map) -> set(Map);
                {ok, _} -> {error, {config_not_an_object, File}};
                {error, Why} -> {error, {bad_config_json, File, Why}}
            end;
        {error, Why} -> {error, {config_unreadable, File, Why}}
    end.

set(Overrides) ->
    Defaults = defaults(),
    try
        Config = maps:fold(fun(K, V, Acc) ->
                                   Key = key(K, Defaults),
                                   Acc#{Key => check(Key, V)}
                           end, Defaults, Overrides),
        persistent_term:put(?MODULE, Config),
        {ok, Config}
    catch throw:{bad_config, _, _} = Why -> {error, Why}
    end.

key(K, Defaults) when is_atom(K) -> key(atom_to_binary(K), Defaults);
key(K, Defaults) ->
    case [A || A <- maps:keys(Defaults), atom_to_binary(A) =:= K] of
        [A] -> A;
        [] -> throw({bad_config, unknown_key, K})
    end.

check(K, V) when K =:= port, is_integer(V), V >= 0, V < 65536 -> V;
check(K, V) when K =:= max_body; K =:= max_jobs; K =:= job_timeout_ms; K =:= max_job_timeout_ms;
                 K =:= local_nodes ->
    case is_integer(V) andalso V >= 0 of true -> V; false -> throw({bad_config, K, V}) end;
check(K, V) when K =:= result_ttl_s; K =:= max_result_ttl_s ->
    case is_number(V) andalso V >= 0 of true -> V; false -> throw({bad_config, K, V}) end;
check(K, V) when K =:= job_modules; K =:= code_paths; K =:= nodes ->
    case is_list(V) andalso lists:all(fun is_binary/1, V) of
        true -> V;
        false -> throw({bad_config, K, V})
    end;
check(K, V) when K =:= token; K =:= cookie; K =:= ready_file ->
    case V =:= null orelse (is_binary(V) andalso V =/= <<>>) of
        true -> V;
        false -> throw({bad_config, K, V})
    end;
check(bind, V) when is_binary(V) ->
    case inet:parse_address(binary_to_list(V)) of
        {ok, _} -> V;
        _ -> throw({bad_config, bind, V})
    end;
check(K, V) -> throw({bad_config, K, V}).

get(Key) -> maps:get(Key, all()).

all() -> persistent_term:get(?MODULE, defaults()).
