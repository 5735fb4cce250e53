%%% @doc Turns a job request (decoded JSON) into a checked plan, and runs a plan.
%%%
%%% Requests name functions as "module:function" from the operator's allow-list; nothing
%%% in a request becomes an atom unless it already is one, so a client cannot fill the
%%% atom table or reach a module that was not allowed. A function that declares it reads
%%% files (`-bbc_reads_files') gets only paths under the operator's data roots, checked here
%%% before the job starts, and only as the item or argument it reads.
%%%
%%% `functions/0' lists what a request may name (`GET /functions'), with each function's doc:
%%% a module says what its job functions do with `-bbc_doc({Function, Arity, "Text"}).'
%%% (or a list of those), which works on every release; EEP-48 docs (OTP 27's `-doc') are
%%% read where a module has them and no `-bbc_doc' says otherwise.
-module(bbc_exec).
-export([parse/1, run/2, worker_slots/1, functions/0]).
-export_type([plan/0, listed/0]).

%% One callable job function as `GET /functions' shows it.
-type listed() :: #{name := binary(), arity := arity(), doc := binary() | null,
                    reads_files := boolean()}.

%% A checked job: op, its functions and items (or call and args), malt, timeout, ttl, async.
-type plan() :: #{op := binary(), atom() => term()}.

-define(OPS, [<<"call">>, <<"map">>, <<"filter">>, <<"fold">>, <<"mapreduce">>, <<"sort">>]).

%% @doc `{ok, Plan}' or `{error, HttpStatus, Code, Reason}'.
-spec parse(term()) -> {ok, plan()} | {error, pos_integer(), binary(), binary()}.
parse(Spec) when is_map(Spec) ->
    try {ok, plan(Spec)}
    catch throw:{reject, Status, Code, Reason} -> {error, Status, Code, Reason}
    end;
parse(_) ->
    {error, 400, <<"bad_request">>, <<"the request body must be a JSON object">>}.

plan(Spec) ->
    Known = [<<"op">>, <<"fun">>, <<"args">>, <<"items">>, <<"init">>, <<"fuse">>, <<"map">>,
             <<"reduce">>, <<"chunk">>, <<"processes">>, <<"nodes">>, <<"timeout">>, <<"ttl">>,
             <<"async">>],
    case maps:keys(Spec) -- Known of
        [] -> ok;
        Extra -> bad(<<"unknown fields: ", (join(Extra))/binary>>)
    end,
    Op = field(<<"op">>, Spec, fun is_binary/1, <<"a string">>),
    lists:member(Op, ?OPS) orelse bad(<<"op must be one of ", (join(?OPS))/binary>>),
    Config = bbc_config:all(),
    Timeout = optional(<<"timeout">>, Spec, maps:get(job_timeout_ms, Config),
                       fun(T) -> is_integer(T) andalso T > 0
                                     andalso T =< maps:get(max_job_timeout_ms, Config) end,
                       <<"a positive integer of milliseconds within the service's limit">>),
    Ttl = optional(<<"ttl">>, Spec, maps:get(result_ttl_s, Config),
                   fun(T) -> is_number(T) andalso T >= 0
                                 andalso T =< maps:get(max_result_ttl_s, Config) end,
                   <<"a number of seconds within the service's limit">>),
    Async = optional(<<"async">>, Spec, false, fun is_boolean/1, <<"true or false">>),
    Base = #{op => Op, timeout => Timeout, ttl => Ttl, async => Async},
    case Op of
        <<"call">> ->
            Args = optional(<<"args">>, Spec, [], fun is_list/1, <<"an array">>),
            Call = function(<<"fun">>, Spec, length(Args)),
            Base#{call => Call, args => file_inputs([Call], Args), total => 1};
        _ ->
            Items = field(<<"items">>, Spec, fun is_list/1, <<"an array">>),
            Funs = op_funs(Op, Spec),
            Base#{items => item_inputs(Op, Funs, Items), total => length(Items),
                  malt => malt(Spec, length(Items)), funs => Funs}
    end.

%% Items reach `fun' (map, filter) or `map' (mapreduce) as they are; any other role gets
%% computed values, which a file-reading function must never see.
item_inputs(Op, Funs, Items) ->
    Direct = case Op of
                 <<"mapreduce">> -> [map];
                 _ when Op =:= <<"map">>; Op =:= <<"filter">> -> [f];
                 _ -> []
             end,
    [forbidden(<<"a function that reads files takes paths from the items only (as the map or ",
                 "filter function)">>)
     || {Role, F} <- maps:to_list(Funs), is_function(F), not lists:member(Role, Direct),
        reads_files(F)],
    file_inputs([maps:get(R, Funs) || R <- Direct], Items).

%% Every input of a file-reading function must be a path under a data root; it is passed on
%% resolved, so what runs is what was checked.
file_inputs(Funs, Inputs) ->
    case lists:any(fun reads_files/1, Funs) of
        false -> Inputs;
        true ->
            [case bbc_files:check(Path) of
                 {ok, Real} -> Real;
                 {error, Why} when is_binary(Path) ->
                     forbidden(<<Why/binary, ": ", (printable(Path))/binary>>);
                 {error, Why} -> forbidden(Why)
             end || Path <- Inputs]
    end.

reads_files(F) ->
    {module, M} = erlang:fun_info(F, module),
    {name, N} = erlang:fun_info(F, name),
    {arity, A} = erlang:fun_info(F, arity),
    M =/= erlang andalso bbc_files:reads_files(M, {N, A}).

printable(Path) when byte_size(Path) > 200 -> <<(binary:part(Path, 0, 200))/binary, "...">>;
printable(Path) -> Path.

forbidden(Reason) -> throw({reject, 403, <<"forbidden">>, Reason}).

op_funs(<<"map">>, Spec) -> #{f => function(<<"fun">>, Spec, 1)};
op_funs(<<"filter">>, Spec) -> #{f => function(<<"fun">>, Spec, 1)};
op_funs(<<"fold">>, Spec) ->
    F = function(<<"fun">>, Spec, 2),
    Fuse = case maps:is_key(<<"fuse">>, Spec) of
               true -> function(<<"fuse">>, Spec, 2);
               false -> F
           end,
    maps:is_key(<<"init">>, Spec) orelse bad(<<"fold needs init">>),
    #{f => F, fuse => Fuse, init => maps:get(<<"init">>, Spec)};
op_funs(<<"mapreduce">>, Spec) ->
    Map = function(<<"map">>, Spec, 1),
    case maps:is_key(<<"reduce">>, Spec) of
        true -> #{map => Map, reduce => function(<<"reduce">>, Spec, 2)};
        false -> #{map => Map}
    end;
op_funs(<<"sort">>, Spec) ->
    case maps:is_key(<<"fun">>, Spec) of
        true -> #{f => function(<<"fun">>, Spec, 2)};
        false -> #{f => fun erlang:'=<'/2}
    end.

malt(Spec, _Len) ->
    Chunk = optional(<<"chunk">>, Spec, undefined, fun(C) -> is_integer(C) andalso C > 0 end,
                     <<"a positive integer">>),
    Procs = optional(<<"processes">>, Spec, undefined,
                     fun(P) -> is_integer(P) andalso P > 0 andalso P =< 1024 end,
                     <<"an integer from 1 to 1024">>),
    Nodes = optional(<<"nodes">>, Spec, <<"all">>,
                     fun(N) -> N =:= <<"all">> orelse N =:= <<"none">> orelse
                                   (is_list(N) andalso lists:all(fun is_binary/1, N)) end,
                     <<"\"all\", \"none\" or an array of node names">>),
    case Nodes of
        Names when is_list(Names) ->
            Known = [atom_to_binary(W) || W <- bbc_nodes:workers()],
            case Names -- Known of
                [] -> ok;
                Unknown -> bad(<<"unknown or down worker nodes: ", (join(Unknown))/binary>>)
            end;
        _ -> ok
    end,
    #{chunk => Chunk, processes => Procs, nodes => Nodes}.

%% @doc The plists Malt for the workers wanted: named (must be known), all, or none.
-spec worker_slots(#{nodes := term(), processes := term(), chunk := term(), _ => _}) ->
          [{nodes, [{node(), schedulers}]} | {processes, term()} | {chunk, term()}].
worker_slots(#{nodes := Wanted, processes := Procs, chunk := Chunk}) ->
    Workers = bbc_nodes:workers(),
    Nodes = case Wanted of
                <<"all">> -> Workers;
                <<"none">> -> [];
                Names -> [N || N <- Workers, lists:member(atom_to_binary(N), Names)]
            end,
    NodeOpt = [{nodes, [{N, schedulers} || N <- Nodes]} || Nodes =/= []],
    ProcOpt = case {Procs, Nodes} of
                  {undefined, []} -> [{processes, schedulers}];
                  {undefined, _} -> [];
                  {P, _} -> [{processes, P}]
              end,
    NodeOpt ++ ProcOpt ++ [{chunk, Chunk} || Chunk =/= undefined].

%% @doc Run a plan in the calling process; returns the result as JSON text, or raises.
%% Encoding here keeps it inside the job's time limit and gives its exact size.
-spec run(plan(), term()) -> binary().
run(#{op := <<"call">>, call := Fun, args := Args}, _Progress) ->
    iolist_to_binary(bbc_json:encode(apply(Fun, Args)));
run(#{op := Op, items := Items, malt := Malt, funs := Funs}, Progress) ->
    Opts = [{progress, Progress} | worker_slots(Malt)],
    iolist_to_binary(bbc_json:encode(apply_op(Op, Funs, Items, Opts))).

apply_op(<<"map">>, #{f := F}, Items, Opts) -> bbc_plists:map(F, Items, Opts);
apply_op(<<"filter">>, #{f := F}, Items, Opts) -> bbc_plists:filter(F, Items, Opts);
apply_op(<<"fold">>, #{f := F, fuse := Fuse, init := Init}, Items, Opts) ->
    bbc_plists:fold(F, Fuse, Init, Items, Opts);
apply_op(<<"mapreduce">>, #{map := Map, reduce := Reduce}, Items, Opts) ->
    bbc_plists:mapreduce_combine(Map, Reduce, Items, Opts);
apply_op(<<"mapreduce">>, #{map := Map}, Items, Opts) ->
    bbc_plists:mapreduce(Map, Items, Opts);
apply_op(<<"sort">>, #{f := F}, Items, Opts) -> bbc_plists:sort(F, Items, Opts).

%%% ------------------------------------------------------------------ listing

%% @doc Every function a request may name: the exports of the allowed job modules that load,
%% without `module_info' (never callable), sorted; exactly what `function/3' accepts.
-spec functions() -> [listed()].
functions() ->
    lists:append([module_functions(M) || M <- lists:usort(bbc_config:get(job_modules))]).

module_functions(ModName) ->
    try binary_to_existing_atom(ModName) of
        Mod ->
            case code:ensure_loaded(Mod) of
                {module, Mod} ->
                    Docs = docs(Mod),
                    [#{name => <<ModName/binary, ":", (atom_to_binary(F))/binary>>, arity => A,
                       doc => maps:get({F, A}, Docs, null),
                       reads_files => bbc_files:reads_files(Mod, {F, A})}
                     || {F, A} <- lists:sort(Mod:module_info(exports)), F =/= module_info];
                _ -> []
            end
    catch error:badarg -> []
    end.

%% `{Function, Arity} => Doc' from EEP-48 chunks where present, `-bbc_doc' over them.
docs(Mod) ->
    Declared = lists:append([as_list(L) || {bbc_doc, L} <- Mod:module_info(attributes)]),
    Own = maps:from_list([{{F, A}, text(Doc)} || {F, A, Doc} <- Declared, is_atom(F),
                                                 is_integer(A), text(Doc) =/= null]),
    maps:merge(eep48_docs(Mod), Own).

as_list(L) when is_list(L) -> L;
as_list(T) -> [T].

%% Text only (an EEP-48 doc in another format, e.g. OTP's own HTML-like terms, is skipped).
text(Doc) when is_list(Doc); is_binary(Doc) ->
    try unicode:characters_to_binary(Doc) of
        Bin when is_binary(Bin) -> iolist_to_binary(string:trim(Bin));
        _ -> null
    catch error:badarg -> null
    end;
text(_) -> null.

eep48_docs(Mod) ->
    try code:get_doc(Mod) of
        {ok, {docs_v1, _, _, _, _, _, Entries}} ->
            maps:from_list([{{F, A}, Text} || {{function, F, A}, _, _, #{<<"en">> := Doc}, _} <- Entries,
                                             Text <- [text(Doc)], Text =/= null]);
        _ -> #{}
    catch _:_ -> #{}
    end.

%%% ------------------------------------------------------------------ checks

%% "module:function" of the given arity, from an allowed module; 404 otherwise.
function(Name, Spec, Arity) ->
    Text = field(Name, Spec, fun is_binary/1, <<"a string \"module:function\"">>),
    {ModName, FunName} = case binary:split(Text, <<":">>) of
                             [M, F] when M =/= <<>>, F =/= <<>> -> {M, F};
                             _ -> bad(<<Name/binary, " must look like \"module:function\"">>)
                         end,
    Allowed = bbc_config:get(job_modules),
    lists:member(ModName, Allowed) orelse unknown(Text, Arity),
    %% module_info would tell a client where and how the service is installed
    FunName =/= <<"module_info">> orelse unknown(Text, Arity),
    try
        Mod = binary_to_existing_atom(ModName),
        Fun = binary_to_existing_atom(FunName),
        {module, Mod} = code:ensure_loaded(Mod),
        true = erlang:function_exported(Mod, Fun, Arity),
        fun Mod:Fun/Arity
    catch error:_ -> unknown(Text, Arity)
    end.

unknown(Text, Arity) ->
    throw({reject, 404, <<"unknown_function">>,
           <<"no job function ", Text/binary, "/", (integer_to_binary(Arity))/binary,
             " in the allowed job modules">>}).

field(Name, Spec, Check, What) ->
    case maps:find(Name, Spec) of
        {ok, V} -> checked(Name, V, Check, What);
        error -> bad(<<"missing field ", Name/binary>>)
    end.

optional(Name, Spec, Default, Check, What) ->
    case maps:find(Name, Spec) of
        {ok, V} -> checked(Name, V, Check, What);
        error -> Default
    end.

checked(Name, V, Check, What) ->
    case Check(V) of
        true -> V;
        false -> bad(<<Name/binary, " must be ", What/binary>>)
    end.

bad(Reason) -> throw({reject, 400, <<"bad_request">>, Reason}).

join(Bins) -> iolist_to_binary(lists:join(<<", ">>, Bins)).
