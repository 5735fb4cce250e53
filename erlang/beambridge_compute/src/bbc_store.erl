%%% @doc The durable record of accepted background jobs: one file per job under the
%%% service's data directory, so a job answered 202 survives a crash of the service.
%%%
%%% <pre>
%%% DATA_DIR/jobs/ID.job    the request as accepted (body, client, time): written and
%%%                         synced before the 202 is sent
%%% DATA_DIR/jobs/ID.done   the outcome, once there is one (result, error or status); the
%%%                         request is deleted then (it is no longer needed, and big)
%%% </pre>
%%% Files are written whole to a temporary name of their own, synced and renamed, so a crash
%%% leaves the old state or the new, never half a file, and two writers never share a file.
%%% One file per job keeps writes independent of each other and of any server process, and a
%%% bad file costs one job, not the table. Writers of one job are ordered by bbc_jobs.
-module(bbc_store).
-export([dir/0, record/2, finished/2, remove/1, recover/0]).

%% @doc The jobs folder (created on first use), from `data_dir' or the user's data dir.
-spec dir() -> file:filename_all().
dir() ->
    persistent_term:erase(?MODULE),
    Base = case bbc_config:get(data_dir) of
               null -> filename:join(filename:basedir(user_data, "beambridge_compute"),
                                     atom_to_list(node()));
               Configured -> Configured
           end,
    Dir = filename:join(Base, "jobs"),
    ok = filelib:ensure_path(Dir),
    %% Request bodies and results: for the service's user only.
    ok = file:change_mode(Dir, 8#700),
    Dir.

%% @doc Record an accepted job durably; `ok' only once it is on disk.
-spec record(binary(), map()) -> ok | {error, term()}.
record(Id, Facts) -> write(path(Id, ".job"), Facts).

%% @doc Record a job's outcome, then forget its request (best effort: without the outcome
%% the job runs again after a crash).
-spec finished(binary(), map()) -> ok | {error, term()}.
finished(Id, Outcome) ->
    case write(path(Id, ".done"), Outcome) of
        ok -> _ = file:delete(path(Id, ".job")), ok;
        Error -> Error
    end.

-spec remove(binary()) -> ok.
remove(Id) ->
    _ = file:delete(path(Id, ".job")),
    _ = file:delete(path(Id, ".done")),
    ok.

%% @doc Every recorded job: `{Id, Facts | none, Outcome | none}' (at least one of the two).
%% An unreadable file is reported, not dropped: the job comes back as lost.
-spec recover() -> [{binary(), map() | none | {unreadable, term()}, map() | none | {unreadable, term()}}].
recover() ->
    Dir = dir(),
    {ok, Names} = file:list_dir(Dir),
    [_ = file:delete(filename:join(Dir, N)) || N <- Names, filename:extension(N) =:= ".tmp"],
    Ids = lists:usort([root(N) || N <- Names, lists:member(filename:extension(N), [".job", ".done"])]),
    [{Id, read(path(Id, ".job")), read(path(Id, ".done"))} || Id <- Ids].

%%% ------------------------------------------------------------------ internals

root(Name) -> list_to_binary(filename:rootname(Name)).

%% dir/0 once per service start (bbc_jobs calls it at init), then from persistent_term.
path(Id, Ext) ->
    Dir = case persistent_term:get(?MODULE, undefined) of
              undefined -> D = dir(), persistent_term:put(?MODULE, D), D;
              D -> D
          end,
    filename:join(Dir, <<Id/binary, (list_to_binary(Ext))/binary>>).

write(Path, Term) ->
    Tmp = iolist_to_binary([Path, ".", integer_to_list(erlang:unique_integer([positive])), ".tmp"]),
    case file:open(Tmp, [write, raw, binary]) of
        {ok, Fd} ->
            Result = case file:write(Fd, term_to_binary(Term)) of
                         ok -> file:datasync(Fd);
                         Error -> Error
                     end,
            ok = file:close(Fd),
            case Result of
                ok -> file:rename(Tmp, Path);
                _ -> _ = file:delete(Tmp), Result
            end;
        Error -> Error
    end.

read(Path) ->
    case file:read_file(Path) of
        {ok, Bin} ->
            %% Our own files, in a folder only the service's user can write.
            try binary_to_term(Bin) of
                Map when is_map(Map) -> Map;
                Other -> {unreadable, {not_a_map, Other}}
            catch error:badarg -> {unreadable, corrupt}
            end;
        {error, enoent} -> none;
        {error, Why} -> {unreadable, Why}
    end.
