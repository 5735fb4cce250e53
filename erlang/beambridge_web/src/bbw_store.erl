%% A key/value store in Mnesia (a disc_copies table on this node), for web apps to use by rpc.
%%
%% setup(Dir) makes the schema on disc in Dir (once), starts Mnesia and the table; after a
%% restart of the node, setup(Dir) again finds the data that was written before. Mnesia is
%% never stopped here (other applications may use it): when it already runs, it must run
%% in Dir (its `dir' setting, e.g. from sys.config), and a schema it holds in RAM is moved
%% to disc there.
-module(bbw_store).
-export([setup/1, put/2, get/1, delete/1, keys/0, count/0, info/0]).

-record(bbw_kv, {key, value}).

%% @doc Mnesia in `Dir' and the store's table in it; the table's storage type.
-spec setup(file:filename_all()) -> {ok, disc_copies} | {error, term()}.
setup(Dir) ->
    DirS = filename:absname(unicode:characters_to_list(Dir)),
    ok = filelib:ensure_dir(filename:join(DirS, "x")),
    case running() of
        false -> start_in(DirS);
        true ->
            case filename:absname(mnesia:system_info(directory)) of
                DirS -> schema_on_disc();
                Other -> {error, {mnesia_runs_elsewhere, unicode:characters_to_binary(Other)}}
            end
    end.

running() -> lists:keymember(mnesia, 1, application:which_applications()).

start_in(DirS) ->
    ok = application:set_env(mnesia, dir, DirS),
    case mnesia:create_schema([node()]) of
        ok -> ok;
        {error, {_, {already_exists, _}}} -> ok
    end,
    {ok, _} = application:ensure_all_started(mnesia),
    table().

%% Mnesia already runs in the right folder, perhaps with its schema in RAM only (started
%% before any schema was made there).
schema_on_disc() ->
    case mnesia:table_info(schema, storage_type) of
        disc_copies -> table();
        ram_copies ->
            case mnesia:change_table_copy_type(schema, node(), disc_copies) of
                {atomic, ok} -> table();
                {aborted, Why} -> {error, {schema_not_on_disc, Why}}
            end
    end.

table() ->
    case mnesia:create_table(bbw_kv, [{disc_copies, [node()]},
                                      {attributes, record_info(fields, bbw_kv)}]) of
        {atomic, ok} -> ok;
        {aborted, {already_exists, bbw_kv}} -> ok
    end,
    %% Mnesia's folder belongs to the node name that made it: a node of another name finds
    %% the table's copy on that node and would wait for it in vain.
    Copies = mnesia:table_info(bbw_kv, all_nodes),
    case lists:member(node(), Copies) andalso mnesia:wait_for_tables([bbw_kv], 20000) of
        ok -> {ok, disc_copies = mnesia:table_info(bbw_kv, storage_type)};
        false -> {error, {table_not_loaded,
                          #{hint => <<"the table in this folder belongs to another node name: "
                                      "start the node with that -name, or use a fresh folder">>,
                            table_on => Copies, this_node => node()}}};
        {timeout, _} -> {error, {table_not_loaded, #{hint => <<"bbw_kv did not load within 20 s">>}}};
        {error, Why} -> {error, {table_not_loaded, Why}}
    end.

%% Writes are synced to the disc log before the answer: a node killed right after still has them.
-spec put(term(), term()) -> ok.
put(Key, Value) ->
    written(mnesia:sync_transaction(fun() -> mnesia:write(#bbw_kv{key = Key, value = Value}) end)).

-spec get(term()) -> {ok, term()} | not_found.
get(Key) ->
    case mnesia:transaction(fun() -> mnesia:read(bbw_kv, Key) end) of
        {atomic, [#bbw_kv{value = V}]} -> {ok, V};
        {atomic, []} -> not_found;
        {aborted, Why} -> aborted(Why)
    end.

-spec delete(term()) -> ok.
delete(Key) ->
    written(mnesia:sync_transaction(fun() -> mnesia:delete({bbw_kv, Key}) end)).

written({atomic, ok}) -> mnesia:sync_log();
written({aborted, Why}) -> aborted(Why).

%% A store used before setup/1 (Mnesia not running, no table yet) fails with a reason that
%% names the fix, instead of a case_clause/badmatch on Mnesia's own answer.
-spec aborted(term()) -> no_return().
aborted(Why) ->
    Hint = case Why of
               {node_not_running, _} -> <<"Mnesia is not running here: call bbw_store:setup(Dir) first">>;
               {no_exists, _} -> <<"no bbw_kv table here: call bbw_store:setup(Dir) first">>;
               _ -> <<"the Mnesia transaction aborted">>
           end,
    erlang:error({bbw_store, Why, Hint}).

-spec keys() -> [term()].
keys() -> mnesia:dirty_all_keys(bbw_kv).

-spec count() -> non_neg_integer().
count() -> mnesia:table_info(bbw_kv, size).

-spec info() -> #{storage := atom(), dir := binary(), size := non_neg_integer()}.
info() -> #{storage => mnesia:table_info(bbw_kv, storage_type),
            dir => list_to_binary(mnesia:system_info(directory)),
            size => count()}.
