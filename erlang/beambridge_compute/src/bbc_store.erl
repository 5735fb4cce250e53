%%% @doc The durable record of accepted background jobs: one file per job under the
%%% service's data directory, so a job answered 202 survives a crash of the service.
%%%
%%% <pre>
%%% DATA_DIR/jobs/ID.job    the request as accepted (body, client, time): written and
%%%                         synced before the 202 is sent
%%% DATA_DIR/jobs/ID.done   the outcome, once there is one (result, error or status)
%%% </pre>
%%% Files are written whole to a temporary name, synced and renamed, so a crash leaves the
%%% old state or the new, never half a file. One file per job keeps writes independent of
%%% each other and of any server process, and a bad file costs one job, not the table.
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

%% @doc Record a job's outcome (best effort: without it the job runs again after a crash).
-spec finished(binary(), map()) -> ok | {error, term()}.
finished(Id, Outcome) -> write(path(Id, ".done"), Outcome).

-spec remove(binary()) -> ok.
remove(Id) ->
    _ = file:delete(path(Id, ".job")),
    _ = file:delete(path(Id, ".done")),
    ok.

%% @doc Every recorded job: `{Id, Facts, Outcome | none}'. Unreadable files are reported
%% as lost jobs rather than dropped; an outcome without its job is removed.
-spec recover() -> [{binary(), map() | {unreadable, term()}, map() | none}].
recover() ->
    Dir = dir(),
    {ok, Names} = file:list_dir(Dir),
    Jobs = [root(N) || N <- Names, filename:extension(N) =:= ".job"],
    Stale = [N || N <- Names,
                  case filename:extension(N) of
                      ".tmp" -> true;
                      ".done" -> not lists:member(root(N), Jobs);
                      _ -> false
                  end],
    [_ = file:delete(filename:join(Dir, N)) || N <- Stale],
    [{Id, read(path(Id, ".job")),
      case read(path(Id, ".done")) of
          {unreadable, _} -> none;
          Outcome -> Outcome
      end} || Id <- Jobs].

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
    Tmp = iolist_to_binary([Path, ".tmp"]),
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
        {error, Why} -> {unreadable, Why}
    end.
