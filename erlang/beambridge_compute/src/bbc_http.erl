%%% @doc The HTTP+JSON front on MochiWeb.
%%%
%%% <pre>
%%% GET    /health          liveness, no token needed
%%% GET    /nodes           the cluster and each node's load
%%% POST   /jobs            run a job; {"async": true} answers 202 with an id at once
%%% GET    /jobs/ID[?wait=MS]  status, progress and result; waits up to MS for the end
%%% DELETE /jobs/ID         cancel a running job, or drop a finished one
%%% </pre>
%%% Every error answer is a JSON object `{"error": Code, "reason": Text, ...}'. Limits are
%%% checked before work starts (413 body size, 429 jobs in flight), so a refused request
%%% never disturbs running jobs.
-module(bbc_http).
-export([start_link/0, port/0, loop/1]).

-define(MAX_WAIT_MS, 60000).

start_link() ->
    {ok, Ip} = inet:parse_address(binary_to_list(bbc_config:get(bind))),
    mochiweb_http:start_link([{name, ?MODULE}, {ip, Ip}, {port, bbc_config:get(port)},
                              {loop, fun ?MODULE:loop/1}, {acceptor_pool_size, 32}]).

port() -> mochiweb_socket_server:get(?MODULE, port).

loop(Req) ->
    Method = mochiweb_request:get(method, Req),
    Path = string:lexemes(mochiweb_request:get(path, Req), "/"),
    try route(Method, Path, Req) of
        {Status, Body} -> reply(Req, Status, Body, []);
        {Status, Body, Headers} -> reply(Req, Status, Body, Headers)
    catch
        exit:{body_too_large, _} ->
            reply(Req, 413, error_body(<<"body_too_large">>,
                                       <<"the request body is over the limit of ",
                                         (integer_to_binary(bbc_config:get(max_body)))/binary,
                                         " bytes">>),
                  [{"Connection", "close"}]);
        exit:{noproc, _} ->
            reply(Req, 503, error_body(<<"unavailable">>, <<"the service is not running">>),
                  [{"Retry-After", "1"}]);
        Class:Why:Stack ->
            logger:error("bbc_http: ~p ~s failed: ~0p:~0p ~0p", [Method, mochiweb_request:get(path, Req),
                                                                 Class, Why, Stack]),
            reply(Req, 500, error_body(<<"internal">>, <<"internal error; see the service log">>), [])
    end.

route('GET', ["health"], _Req) ->
    {200, #{status => ok, node => node(), otp_release => list_to_binary(erlang:system_info(otp_release)),
            jobs_running => bbc_jobs:running(), workers => length(bbc_nodes:workers()),
            json => bbc_json:backend()}};
route(Method, Path, Req) ->
    case authorized(Req) of
        true -> authorized_route(Method, Path, Req);
        false -> {401, error_body(<<"unauthorized">>, <<"a valid bearer token is required">>),
                  [{"WWW-Authenticate", "Bearer"}]}
    end.

authorized_route('GET', ["nodes"], _Req) ->
    {200, #{nodes => bbc_nodes:info()}};
authorized_route('POST', ["jobs"], Req) ->
    submit(Req);
authorized_route('GET', ["jobs", Id], Req) ->
    Wait = case proplists:get_value("wait", mochiweb_request:parse_qs(Req)) of
               undefined -> 0;
               Text -> try min(?MAX_WAIT_MS, max(0, list_to_integer(Text))) catch _:_ -> 0 end
           end,
    case bbc_jobs:wait(list_to_binary(Id), Wait) of
        {ok, View} -> {200, view_json(View)};
        not_found -> unknown_job(Id)
    end;
authorized_route('DELETE', ["jobs", Id], _Req) ->
    BinId = list_to_binary(Id),
    case bbc_jobs:cancel(BinId) of
        ok -> {200, #{id => BinId, status => cancelled}};
        {finished, View} -> bbc_jobs:forget(BinId), {200, (view_json(View))#{deleted => true}};
        not_found -> unknown_job(Id)
    end;
authorized_route(_Method, Path, _Req) when Path =:= ["health"]; Path =:= ["nodes"];
                                             Path =:= ["jobs"]; length(Path) =:= 2,
                                             hd(Path) =:= "jobs" ->
    {405, error_body(<<"method_not_allowed">>, <<"method not allowed here">>)};
authorized_route(_Method, _Path, _Req) ->
    {404, error_body(<<"not_found">>, <<"no such endpoint">>)}.

unknown_job(Id) ->
    {404, error_body(<<"unknown_job">>, <<"no job ", (list_to_binary(Id))/binary,
                                           " (never existed, or its result expired)">>)}.

submit(Req) ->
    Max = bbc_config:get(max_body),
    case mochiweb_request:get(body_length, Req) of
        N when is_integer(N), N > Max -> exit({body_too_large, content_length});
        _ -> ok
    end,
    Body = case mochiweb_request:recv_body(Max, Req) of
               undefined -> <<>>;
               B -> B
           end,
    case bbc_json:decode(Body) of
        {error, Why} -> {400, error_body(<<"bad_json">>, <<"the body is not valid JSON: ", Why/binary>>)};
        {ok, Spec} ->
            case bbc_exec:parse(Spec) of
                {error, Status, Code, Reason} -> {Status, error_body(Code, Reason)};
                %% A synchronous job's record must outlive the wait for it, whatever its ttl.
                {ok, #{async := false, ttl := Ttl} = Plan} -> start(Plan#{ttl := max(Ttl, 10)});
                {ok, Plan} -> start(Plan)
            end
    end.

start(Plan) ->
    case bbc_jobs:submit(Plan) of
        {error, busy} ->
            {429, error_body(<<"too_many_jobs">>,
                             <<"the service already runs its limit of ",
                               (integer_to_binary(bbc_config:get(max_jobs)))/binary, " jobs">>),
             [{"Retry-After", "1"}]};
        {ok, Id} when map_get(async, Plan) ->
            {202, #{id => Id, status => running, url => <<"/jobs/", Id/binary>>},
             [{"Location", "/jobs/" ++ binary_to_list(Id)}]};
        {ok, Id} ->
            {ok, View} = bbc_jobs:wait(Id, maps:get(timeout, Plan) + 5000),
            bbc_jobs:forget(Id),
            sync_answer(View)
    end.

sync_answer(#{status := done, result := Result}) ->
    {200, #{status => done, result => Result}};
sync_answer(#{status := failed, error := Error}) ->
    {500, maps:merge(error_body(<<"job_failed">>, <<"the job raised">>), error_json(Error))};
sync_answer(#{status := timeout, timeout := Ms}) ->
    {504, error_body(<<"timeout">>, <<"the job did not finish within ", (integer_to_binary(Ms))/binary,
                                      " ms">>)};
sync_answer(#{status := Status}) ->
    {409, error_body(atom_to_binary(Status), <<"the job was ", (atom_to_binary(Status))/binary>>)}.

%%% ------------------------------------------------------------------ JSON shapes

view_json(View) ->
    {Done, Total} = maps:get(progress, View),
    Base = maps:with([id, status, op, started, finished, timeout], View),
    WithResult = case View of
                     #{result := R} -> Base#{result => R};
                     _ -> Base
                 end,
    WithError = case View of
                    #{error := E} -> WithResult#{error => error_json(E)};
                    _ -> WithResult
                end,
    WithError#{progress => #{done => Done, total => Total}}.

error_json({Class, Reason, Stack}) ->
    #{kind => Class,
      reason => iolist_to_binary(io_lib:format("~0tP", [Reason, 40])),
      term => bbc_json:to_json(Reason),
      stack => [frame(F) || F <- Stack]}.

frame({M, F, ArityOrArgs, Loc}) ->
    Arity = case ArityOrArgs of A when is_integer(A) -> A; Args -> length(Args) end,
    Base = #{module => M, function => F, arity => Arity},
    case {proplists:get_value(file, Loc), proplists:get_value(line, Loc)} of
        {undefined, _} -> Base;
        {File, Line} -> Base#{file => unicode:characters_to_binary(File), line => Line}
    end;
frame(Other) -> #{raw => iolist_to_binary(io_lib:format("~0p", [Other]))}.

error_body(Code, Reason) -> #{error => Code, reason => Reason}.

reply(Req, Status, Body, Headers) ->
    Json = bbc_json:encode(Body),
    mochiweb_request:respond({Status, [{"Content-Type", "application/json"} | Headers], Json}, Req).

authorized(Req) ->
    case bbc_config:get(token) of
        null -> true;
        Token ->
            Given = case mochiweb_request:get_header_value("authorization", Req) of
                        "Bearer " ++ T -> list_to_binary(T);
                        _ -> <<>>
                    end,
            crypto:hash(sha256, Given) =:= crypto:hash(sha256, Token)
    end.
