%% A key/value store in Mnesia (a disc_copies table on this node), for web apps to use by rpc.
%%
%% setup(Dir) makes the schema on disc in Dir (once), starts Mnesia and the table; after a
%% restart of the node, setup(Dir) again finds the data that was written before.
-module(bbw_store).
-export([setup/1, put/2, get/1, delete/1, keys/0, count/0, info/0]).

-record(bbw_kv, {key, value}).

setup(Dir) ->
    DirS = unicode:characters_to_list(Dir),
    ok = filelib:ensure_dir(filename:join(DirS, "x")),
    _ = application:stop(mnesia),
    ok = application:set_env(mnesia, dir, DirS),
    case mnesia:create_schema([node()]) of
        ok -> ok;
        {error, {_, {already_exists, _}}} -> ok
    end,
    ok = mnesia:start(),
    case mnesia:create_table(bbw_kv, [{disc_copies, [node()]},
                                      {attributes, record_info(fields, bbw_kv)}]) of
        {atomic, ok} -> ok;
        {aborted, {already_exists, bbw_kv}} -> ok
    end,
    ok = mnesia:wait_for_tables([bbw_kv], 20000),
    {ok, mnesia:table_info(bbw_kv, storage_type)}.

%% Writes are synced to the disc log before the answer: a node killed right after still has them.
put(Key, Value) ->
    {atomic, ok} = mnesia:sync_transaction(fun() -> mnesia:write(#bbw_kv{key = Key, value = Value}) end),
    mnesia:sync_log().

get(Key) ->
    case mnesia:transaction(fun() -> mnesia:read(bbw_kv, Key) end) of
        {atomic, [#bbw_kv{value = V}]} -> {ok, V};
        {atomic, []} -> not_found
    end.

delete(Key) ->
    {atomic, ok} = mnesia:sync_transaction(fun() -> mnesia:delete({bbw_kv, Key}) end),
    mnesia:sync_log().

keys() -> mnesia:dirty_all_keys(bbw_kv).

count() -> mnesia:table_info(bbw_kv, size).

info() -> #{storage => mnesia:table_info(bbw_kv, storage_type),
            dir => list_to_binary(mnesia:system_info(directory)),
            size => count()}.
