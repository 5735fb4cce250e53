%%% @doc The HTTP+JSON front on MochiWeb.
%%%
%%% <pre>
%%% GET    /                the dashboard page (static; its data comes from /cluster)
%%% GET    /health          liveness, no token needed
%%% GET    /nodes           the cluster and each node's load
%%% GET    /cluster         nodes, running and recent jobs, throughput: what the dashboard shows
%%% GET    /metrics         the Prometheus text format
%%% GET    /functions       the job functions a request may name, with their docs
%%% POST   /jobs            run a job; {"async": true} answers 202 with an id at once
%%% GET    /jobs/ID[?wait=MS]  status, progress and result; waits up to MS for the end
%%% DELETE /jobs/ID         cancel a running job, or drop a finished one
%%% </pre>
%%% Every error answer is a JSON object `{"error": Code, "reason": Text, ...}'. Limits are
%%% checked before work starts (413 body size, 429 jobs in flight), so a refused request
%%% never disturbs running jobs.
%%%
%%% Before anything else a request must name an allowed Host (a DNS-rebinding page names
%%% its own), carry no foreign Origin, and send POST and DELETE as application/json (which
%%% a plain HTML form or a "simple" cross-site fetch cannot): a web page the user visits
%%% cannot drive the service. Connections are admitted and timed by bbc_conns.
%%%
%%% With `tls_certfile' and `tls_keyfile' the listener speaks HTTPS only (TLS 1.2 and 1.3,
%%% ssl's default cipher suites); MochiWeb's acceptor bounds each TLS handshake (20 s) before
%%% bbc_conns admits the connection. A failed handshake is logged once, by ssl (a notice
%%% naming the alert), not again as MochiWeb's error and crash reports.
-module(bbc_http).
-export([start_link/0, port/0, loop/1, quiet_tls_accept/2, error_json/1]).

-define(MAX_WAIT_MS, 60000).
-define(LOOPBACK_HOSTS, [<<"localhost">>, <<"127.0.0.1">>, <<"[::1]">>, <<"::1">>]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    {ok, Ip} = inet:parse_address(binary_to_list(bbc_config:get(bind))),
    Max = bbc_config:get(max_connections),
    %% MochiWeb stops accepting at its own max; ours (bbc_conns) is below it, so a new
    %% connection is always seen and can take an idle one's place.
    %% A restarted listener takes the port it had (port 0 picks one only the first time),
    %% so clients and the ready file stay right.
    Port = persistent_term:get({?MODULE, port}, bbc_config:get(port)),
    _ = bbc_config:https() andalso
        logger:add_primary_filter(?MODULE, {fun ?MODULE:quiet_tls_accept/2, []}),  % once per node
    Options = [{name, ?MODULE}, {ip, Ip}, {port, Port},
               {loop, {bbc_conns, serve, [{?MODULE, loop}]}}, {acceptor_pool_size, 32},
               {max, Max + 64}, {backlog, 1024} | tls_options()],
    case listen(Options, 40) of
        {ok, _} = Started ->
            Port =:= 0 andalso persistent_term:put({?MODULE, port}, port()),
            Started;
        Error -> Error
    end.

%% MochiWeb's own TLS defaults take every suite ssl knows (legacy ones too): ours are ssl's
%% defaults for the versions served, which MochiWeb keeps as given.
tls_options() ->
    case bbc_config:https() of
        false -> [];
        true ->
            Versions = ['tlsv1.3', 'tlsv1.2'],
            Files = [{Opt, unicode:characters_to_list(F)}
                     || {Opt, Key} <- [{certfile, tls_certfile}, {keyfile, tls_keyfile},
                                       {cacertfile, tls_cacertfile}],
                        F <- [bbc_config:get(Key)], F =/= null],
            [{ssl, true},
             {ssl_opts, [{versions, Versions}, {honor_cipher_order, true},
                         {ciphers, lists:append([ssl:cipher_suites(default, V) || V <- Versions])}
                         | Files]}]
    end.

%% @doc A logger filter: drops MochiWeb's reports of a TLS handshake that failed (a client
%% that does not trust us, plain HTTP on the HTTPS port, a scanner), ~30 lines each, which
%% ssl's own notice already names.
-spec quiet_tls_accept(logger:log_event(), term()) -> logger:filter_return().
quiet_tls_accept(#{msg := {report, #{label := {error_logger, error_report},
                                     report := [{application, mochiweb}, "Accept failed error", Text]}}},
                 _) when is_list(Text) ->
    case string:find(Text, "tls_alert") of nomatch -> ignore; _ -> stop end;
quiet_tls_accept(#{msg := {report, #{label := {proc_lib, crash}, report := [Info | _]}}}, _)
  when is_list(Info) ->
    case {proplists:get_value(initial_call, Info), proplists:get_value(error_info, Info)} of
        {{mochiweb_acceptor, init, _}, {exit, {error, accept_failed}, _}} -> stop;
        _ -> ignore
    end;
quiet_tls_accept(_Event, _) -> ignore.

%% A listener restarted on its old port may find it still held for a moment by the one
%% that died (its socket is closed asynchronously): try again briefly before giving up.
listen(Options, Tries) ->
    case mochiweb_socket_server:start_link(Options) of
        {error, eaddrinuse} when Tries > 1 ->
            timer:sleep(50),
            listen(Options, Tries - 1);
        Result -> Result
    end.

-spec port() -> inet:port_number().
port() -> mochiweb_socket_server:get(?MODULE, port).

-spec loop(tuple()) -> term().
loop(Req) ->
    %% The headers are in: reading the body (if any) has its own deadline.
    bbc_conns:phase(body),
    case framing(Req) of
        ok -> serve(Req);
        {Status, Code, Reason} -> refuse_framing(Req, Status, Code, Reason)
    end.

%% A body whose length cannot be known is refused before anything reads it, and the
%% connection closed: what follows on it could not be told from the next request.
framing(Req) ->
    try mochiweb_request:get(body_length, Req) of
        {unknown_transfer_encoding, _} ->
            {501, <<"not_implemented">>, <<"the only transfer coding understood is chunked">>};
        _ -> ok
    catch _:_ -> {400, <<"bad_request">>, <<"the Content-Length header is not a length">>}
    end.

%% Written by hand: MochiWeb's own reply path parses the framing again (and fails on it).
refuse_framing(Req, Status, Code, Reason) ->
    bbc_conns:phase(reply),
    Json = iolist_to_binary(bbc_json:encode(error_body(Code, Reason))),
    Socket = mochiweb_request:get(socket, Req),
    _ = mochiweb_socket:send(Socket, [<<"HTTP/1.1 ">>, integer_to_binary(Status),
                                      case Status of 400 -> <<" Bad Request">>;
                                                     _ -> <<" Not Implemented">> end,
                                      <<"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                        "Content-Length: ">>, integer_to_binary(byte_size(Json)),
                                      <<"\r\n\r\n">>, Json]),
    mochiweb_socket:close(Socket),
    exit({shutdown, bad_framing}).

serve(Req) ->
    case persistent_term:get({?MODULE, draining}, false) of
        true ->
            bbc_conns:phase(reply),
            reply(Req, 503, error_body(<<"unavailable">>, <<"the service is stopping">>),
                  [{"Retry-After", "5"}, {"Connection", "close"}]);
        false ->
            put(bbc_request, Req),
            serve_request(Req)
    end.

serve_request(Req) ->
    Method = mochiweb_request:get(method, Req),
    Path = string:lexemes(mochiweb_request:get(path, Req), "/"),
    Answer = try admitted(Method, Path, Req)
             catch
                 exit:{body_too_large, _} ->
                     {413, error_body(<<"body_too_large">>,
                                      <<"the request body is over the limit of ",
                                        (integer_to_binary(bbc_config:get(max_body)))/binary,
                                        " bytes">>),
                      [{"Connection", "close"}]};
                 exit:{noproc, _} ->
                     {503, error_body(<<"unavailable">>, <<"the service is not running">>),
                      [{"Retry-After", "1"}]};
                 exit:{shutdown, Why} ->
                     %% The connection ends on purpose (its client left): nothing to answer.
                     exit({shutdown, Why});
                 exit:{timeout, {gen_server, call, _}} ->
                     {503, error_body(<<"unavailable">>, <<"the service is busy; try again">>),
                      [{"Retry-After", "1"}]};
                 Class:Why:Stack ->
                     logger:error("bbc_http: ~p ~s failed: ~0p:~0p ~0p",
                                  [Method, mochiweb_request:get(path, Req), Class, Why, Stack]),
                     {500, error_body(<<"internal">>, <<"internal error; see the service log">>)}
             end,
    bbc_conns:phase(reply),
    %% (A body left unread is never parsed as a next request: MochiWeb closes such a
    %% connection after the answer; test_security checks it.)
    Close = [{"Connection", "close"} || erase(bbc_close) =:= true],
    case Answer of
        {Status, Body} -> reply(Req, Status, Body, Close);
        {Status, Body, Headers} -> reply(Req, Status, Body, Close ++ Headers)
    end,
    bbc_conns:phase(header).

%% The checks every request passes before it is routed, in this order: Host, Origin,
%% (CORS preflight), token, Content-Type.
admitted(Method, Path, Req) ->
    case host(Req) of
        {error, Why} -> {400, error_body(<<"bad_host">>, Why)};
        {ok, Host} ->
            case origin(Req, Host) of
                {error, Why} -> {403, error_body(<<"bad_origin">>, Why)};
                {ok, Cors} when Method =:= 'OPTIONS' -> preflight(Cors);
                {ok, Cors} ->
                    case route(Method, Path, Req) of
                        {Status, Body} -> {Status, Body, Cors};
                        {Status, Body, Headers} -> {Status, Body, Cors ++ Headers}
                    end
            end
    end.

host(Req) ->
    case mochiweb_request:get_header_value("host", Req) of
        undefined -> {error, <<"a Host header is required">>};
        Value ->
            Host = string:lowercase(unicode:characters_to_binary(Value)),
            Allowed = bbc_config:get(allowed_hosts),
            case lists:member(<<"*">>, Allowed) orelse lists:member(host_name(Host), allowed_hosts()) of
                true -> {ok, Host};
                false -> {error, <<"this Host is not served here; add it to allowed_hosts">>}
            end
    end.

allowed_hosts() ->
    Bind = string:lowercase(bbc_config:get(bind)),
    Own = case Bind of
              <<"0.0.0.0">> -> [];
              <<"::">> -> [];
              _ -> [Bind, <<"[", Bind/binary, "]">>]
          end,
    ?LOOPBACK_HOSTS ++ Own ++ bbc_config:get(allowed_hosts).

%% "name", "name:port", "[v6]", "[v6]:port" -> the name part.
host_name(<<"[", _/binary>> = Host) ->
    case binary:split(Host, <<"]">>) of
        [V6, <<>>] -> <<V6/binary, "]">>;
        [V6, <<":", Port/binary>>] when Port =/= <<>> -> <<V6/binary, "]">>;
        _ -> Host
    end;
host_name(Host) ->
    case binary:split(Host, <<":">>, [global]) of
        [Name, _Port] -> Name;
        _ -> Host
    end.

%% No Origin (not a browser, or a same-origin GET): fine. The service's own origin, or one
%% the operator lists: fine, with CORS headers for a listed one. Anything else: refused.
origin(Req, Host) ->
    case mochiweb_request:get_header_value("origin", Req) of
        undefined -> {ok, []};
        Value ->
            Origin = string:lowercase(unicode:characters_to_binary(Value)),
            Own = [<<"http://", Host/binary>>, <<"https://", Host/binary>>],
            case {lists:member(Origin, Own), lists:member(Origin, bbc_config:get(allowed_origins))} of
                {true, _} -> {ok, []};
                {false, true} ->
                    {ok, [{"Access-Control-Allow-Origin", binary_to_list(Origin)}, {"Vary", "Origin"}]};
                {false, false} ->
                    {error, <<"requests from this Origin are refused; add it to allowed_origins">>}
            end
    end.

preflight([]) ->
    {204, no_body, [{"Allow", "GET, POST, DELETE, OPTIONS"}]};
preflight(Cors) ->
    {204, no_body, Cors ++ [{"Access-Control-Allow-Methods", "GET, POST, DELETE"},
                            {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                            {"Access-Control-Max-Age", "600"}]}.

json_body(Req) ->
    case mochiweb_request:get_header_value("content-type", Req) of
        undefined -> false;
        Value ->
            [Type | _] = string:split(Value, ";"),
            string:lowercase(string:trim(Type)) =:= "application/json"
    end.

route('GET', [], _Req) ->
    bbc_conns:phase(handling),
    asset("index.html");
route('GET', ["dashboard", Name], _Req) ->
    bbc_conns:phase(handling),
    asset(Name);
route('GET', ["health"], _Req) ->
    bbc_conns:phase(handling),
    %% The limits a client needs to know before it sends (the Python client reads max_body).
    {200, #{status => ok, node => node(), otp_release => list_to_binary(erlang:system_info(otp_release)),
            jobs_running => bbc_jobs:running(), workers => length(bbc_nodes:workers()),
            json => bbc_json:backend(),
            limits => maps:with([max_body, max_integer_digits, max_jobs, max_job_timeout_ms],
                                (bbc_config:all())#{max_jobs_per_client => bbc_config:client_share()})}};
route(Method, Path, Req) ->
    case client(Req) of
        {ok, Client} ->
            case json_body(Req) orelse not (Method =:= 'POST' orelse Method =:= 'DELETE') of
                true -> authorized_route(Method, Path, Req, Client);
                false ->
                    {415, error_body(<<"unsupported_media_type">>,
                                     <<"POST and DELETE must be sent as Content-Type: application/json">>)}
            end;
        unauthorized ->
            {401, error_body(<<"unauthorized">>, <<"a valid bearer token is required">>),
             [{"WWW-Authenticate", "Bearer"}]}
    end.

authorized_route('GET', ["nodes"], _Req, _Client) ->
    bbc_conns:phase(handling),
    {200, #{nodes => bbc_nodes:info()}};
authorized_route('GET', ["cluster"], Req, Client) ->
    bbc_conns:phase(handling),
    {200, bbc_dashboard:cluster(Client, mochiweb_request:parse_qs(Req))};
authorized_route('GET', ["metrics"], _Req, _Client) ->
    bbc_conns:phase(handling),
    {200, {content, "text/plain; version=0.0.4; charset=utf-8", bbc_metrics:render()}};
authorized_route('GET', ["functions"], _Req, _Client) ->
    bbc_conns:phase(handling),
    {200, #{functions => bbc_exec:functions()}};
authorized_route('POST', ["jobs"], Req, Client) ->
    submit(Req, Client);
authorized_route('GET', ["jobs", Id], Req, Client) ->
    Wait = case proplists:get_value("wait", mochiweb_request:parse_qs(Req)) of
               undefined -> 0;
               Text -> try min(?MAX_WAIT_MS, max(0, list_to_integer(Text))) catch _:_ -> 0 end
           end,
    %% A long poll waits on the service, not on its client: its connection may be evicted.
    bbc_conns:phase(case Wait of 0 -> handling; _ -> wait end),
    BinId = list_to_binary(Id),
    case owned(BinId, Client) andalso bbc_jobs:get(BinId) of
        {ok, #{status := running}} when Wait > 0 ->
            case await(BinId, Wait, Req) of
                closed -> exit({shutdown, client_closed});
                _Ended -> job_view(BinId, Id)
            end;
        {ok, View} -> answer_view(View);
        _ -> unknown_job(Id)
    end;
authorized_route('DELETE', ["jobs", Id], _Req, Client) ->
    bbc_conns:phase(handling),
    BinId = list_to_binary(Id),
    case owned(BinId, Client) andalso bbc_jobs:cancel(BinId) of
        ok -> {200, #{id => BinId, status => cancelled}};
        {finished, View} -> bbc_jobs:forget(BinId), {200, with(view_json(View), deleted, true)};
        _ -> unknown_job(Id)
    end;
authorized_route(_Method, Path, _Req, _Client) when Path =:= ["health"]; Path =:= ["nodes"];
                                                    Path =:= ["functions"]; Path =:= ["jobs"];
                                                    Path =:= []; Path =:= ["cluster"];
                                                    Path =:= ["metrics"];
                                                    length(Path) =:= 2,
                                                    hd(Path) =:= "jobs" ->
    {405, error_body(<<"method_not_allowed">>, <<"method not allowed here">>)};
authorized_route(_Method, _Path, _Req, _Client) ->
    {404, error_body(<<"not_found">>, <<"no such endpoint">>)}.

%% A file of the dashboard, with headers that keep it from running anything but itself:
%% no inline script or style, no other origin, no framing (clickjacking a cancel button),
%% no referrer.
asset(Name) ->
    case bbc_dashboard:asset(Name) of
        {ok, Type, Bin} ->
            {200, {content, Type, Bin},
             [{"Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                          "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                          "form-action 'none'; frame-ancestors 'none'"},
              {"X-Frame-Options", "DENY"}, {"X-Content-Type-Options", "nosniff"},
              {"Referrer-Policy", "no-referrer"}, {"Cache-Control", "no-cache"}]};
        {error, not_found} -> {404, error_body(<<"not_found">>, <<"no such endpoint">>)};
        {error, {missing, Path}} ->
            logger:error("bbc_http: the dashboard's file ~ts is missing", [Path]),
            {500, error_body(<<"internal">>, <<"the dashboard's files are missing; see the service log">>)}
    end.

%% A finished job whose result was dropped to keep within max_result_bytes is gone (410);
%% everything else is its view.
answer_view(#{status := dropped} = View) ->
    {410, maps:merge(error_body(<<"result_dropped">>, maps:get(reason, View)), view_json(View))};
answer_view(View) -> {200, view_json(View)}.

unknown_job(Id) ->
    {404, error_body(<<"unknown_job">>, <<"no job ", (list_to_binary(Id))/binary,
                                           " (never existed, or its result expired)">>)}.

submit(Req, Client) ->
    Max = bbc_config:get(max_body),
    case mochiweb_request:get(body_length, Req) of
        N when is_integer(N), N > Max -> exit({body_too_large, content_length});
        _ -> ok
    end,
    bbc_conns:phase(body),
    Body = case mochiweb_request:recv_body(Max, Req) of
               undefined -> <<>>;
               B -> B
           end,
    bbc_conns:phase(handling),
    Digits = bbc_config:get(max_integer_digits),
    case bbc_json:long_number(Body, Digits) of
        none -> submit_json(Body, Client);
        At ->
            {400, error_body(<<"number_too_long">>,
                             <<"a JSON number at byte ", (integer_to_binary(At))/binary, " has more than ",
                               (integer_to_binary(Digits))/binary, " digits (max_integer_digits)">>)}
    end.

submit_json(Body, Client) ->
    case bbc_json:decode(Body) of
        {error, Why} -> {400, error_body(<<"bad_json">>, <<"the body is not valid JSON: ", Why/binary>>)};
        {ok, Spec} ->
            case bbc_exec:parse(Spec) of
                {error, Status, Code, Reason} -> {Status, error_body(Code, Reason)};
                %% A synchronous job's record must outlive the wait for it, whatever its ttl.
                {ok, #{async := false, ttl := Ttl} = Plan} ->
                    start(Plan#{ttl := max(Ttl, 10), client => Client}, Body);
                {ok, Plan} -> start(Plan#{client => Client}, Body)
            end
    end.

start(Plan, Body) ->
    case bbc_jobs:submit(Plan, Body) of
        {error, busy} ->
            {429, error_body(<<"too_many_jobs">>,
                             <<"the service already runs its limit of ",
                               (integer_to_binary(bbc_config:get(max_jobs)))/binary, " jobs">>),
             [{"Retry-After", "1"}]};
        {error, share} ->
            {429, error_body(<<"client_share">>,
                             <<"this client already runs its share of ",
                               (integer_to_binary(bbc_config:client_share()))/binary,
                               " jobs (max_jobs_per_client)">>),
             [{"Retry-After", "1"}]};
        {error, {unrecorded, Why}} ->
            logger:error("bbc_http: cannot record a background job: ~0p", [Why]),
            {503, error_body(<<"unavailable">>, <<"the job could not be recorded; not started">>),
             [{"Retry-After", "1"}]};
        {ok, Id} when map_get(async, Plan) ->
            {202, #{id => Id, status => running, url => <<"/jobs/", Id/binary>>},
             [{"Location", "/jobs/" ++ binary_to_list(Id)}]};
        {ok, Id} ->
            case await(Id, maps:get(timeout, Plan) + 5000, get(bbc_request)) of
                closed ->
                    %% Nobody will read the answer: the job's slot is freed now.
                    bbc_jobs:forget(Id),
                    exit({shutdown, client_closed});
                draining ->
                    bbc_jobs:forget(Id),
                    {503, error_body(<<"unavailable">>, <<"the service is stopping; the job was stopped "
                                                          "before it finished">>),
                     [{"Retry-After", "5"}, {"Connection", "close"}]};
                _Ended ->
                    {ok, View} = bbc_jobs:get(Id),
                    bbc_jobs:forget(Id),
                    sync_answer(View)
            end
    end.

job_view(BinId, Id) ->
    case bbc_jobs:get(BinId) of
        {ok, View} -> answer_view(View);
        not_found -> unknown_job(Id)
    end.

%% Wait for a job's end, the client's hang-up, the service's drain, or `Ms', whichever
%% comes first; in this process, so a client that goes away stops waiting at once. Data
%% from the client meanwhile (a pipelined request) ends the wait too, and the connection
%% closes after the answer: it cannot be pushed back for MochiWeb to read.
await(Id, Ms, Req) ->
    Socket = mochiweb_request:get(socket, Req),
    %% Messages name the raw socket: a gen_tcp port, or the sslsocket inside {ssl, _}.
    Raw = case Socket of {ssl, S} -> S; S -> S end,
    Ref = make_ref(),
    case bbc_jobs:notify(Id, Ref) of
        finished -> finished;
        ok ->
            _ = mochiweb_socket:setopts(Socket, [{active, once}]),
            Timer = erlang:send_after(Ms, self(), {Ref, timeout}),
            Why = receive
                      {Ref, finished} -> finished;
                      {Ref, timeout} -> timeout;
                      bbc_drain -> draining;
                      {Closed, Raw} when Closed =:= tcp_closed; Closed =:= ssl_closed -> closed;
                      {Error, Raw, _} when Error =:= tcp_error; Error =:= ssl_error -> closed;
                      {Data, Raw, _} when Data =:= tcp; Data =:= ssl -> put(bbc_close, true), pipelined
                  end,
            _ = erlang:cancel_timer(Timer),
            _ = mochiweb_socket:setopts(Socket, [{active, false}]),
            receive {Late, Raw, _} when Late =:= tcp; Late =:= ssl -> put(bbc_close, true) after 0 -> ok end,
            Why =/= finished andalso bbc_jobs:unnotify(Id, Ref),
            Why
    end.

sync_answer(#{status := done, result := Result}) ->
    {200, {raw, #{status => done}, result, Result}};
sync_answer(#{status := failed, error := {error, {bbc_plists, no_live_slots, _}, _} = Error}) ->
    %% No worker could take the job: the cluster, not the job, is at fault; try again.
    {503, maps:merge(error_body(<<"unavailable">>, <<"no worker node or process could run the job">>),
                     error_json(Error)), [{"Retry-After", "1"}]};
sync_answer(#{status := failed, error := Error}) ->
    {500, maps:merge(error_body(<<"job_failed">>, <<"the job raised">>), error_json(Error))};
sync_answer(#{status := timeout, timeout := Ms}) ->
    {504, error_body(<<"timeout">>, <<"the job did not finish within ", (integer_to_binary(Ms))/binary,
                                      " ms">>)};
sync_answer(#{status := too_large, reason := Reason}) ->
    {500, error_body(<<"result_too_large">>, Reason)};
sync_answer(#{status := Status}) ->
    {409, error_body(atom_to_binary(Status), <<"the job was ", (atom_to_binary(Status))/binary>>)}.

%%% ------------------------------------------------------------------ JSON shapes

view_json(View) ->
    {Done, Total} = maps:get(progress, View),
    Base = maps:with([id, status, op, 'fun', started, finished, timeout, reason], View),
    WithError = case View of
                    #{error := E} -> Base#{error => error_json(E)};
                    _ -> Base
                end,
    Json = WithError#{progress => #{done => Done, total => Total}},
    case View of
        #{result := R} -> {raw, Json, result, R};
        _ -> Json
    end.

with({raw, Map, Key, Raw}, K, V) -> {raw, Map#{K => V}, Key, Raw};
with(Map, K, V) -> Map#{K => V}.

%% @doc What a client learns of a failure: the job's own frames, never the service's (whose
%% file names would tell where and how it is installed), and file names without folders.
-spec error_json({atom(), term(), list()}) -> map().
error_json({Class, Reason, Stack}) ->
    #{kind => Class,
      reason => iolist_to_binary(io_lib:format("~0tP", [Reason, 40])),
      term => bbc_json:to_json(Reason),
      stack => [frame(F) || F <- lists:takewhile(fun(F) -> not service_frame(F) end, Stack)]}.

service_frame({M, _, _, _}) when is_atom(M) ->
    Name = atom_to_binary(M),
    not lists:member(Name, bbc_config:get(job_modules)) andalso
        lists:any(fun(P) -> binary:longest_common_prefix([Name, P]) =:= byte_size(P) end,
                  [<<"bbc_">>, <<"beambridge_compute">>, <<"mochiweb">>, <<"proc_lib">>,
                   <<"gen_server">>]);
service_frame(_) -> false.

frame({M, F, ArityOrArgs, Loc}) ->
    Arity = case ArityOrArgs of A when is_integer(A) -> A; Args -> length(Args) end,
    Base = #{module => M, function => F, arity => Arity},
    case {proplists:get_value(file, Loc), proplists:get_value(line, Loc)} of
        {undefined, _} -> Base;
        {File, Line} -> Base#{file => unicode:characters_to_binary(filename:basename(File)), line => Line}
    end;
frame(Other) -> #{raw => iolist_to_binary(io_lib:format("~0p", [Other]))}.

error_body(Code, Reason) -> #{error => Code, reason => Reason}.

reply(Req, Status, no_body, Headers) ->
    mochiweb_request:respond({Status, Headers, <<>>}, Req);
reply(Req, Status, {content, Type, Body}, Headers) ->
    mochiweb_request:respond({Status, [{"Content-Type", Type} | Headers], Body}, Req);
reply(Req, Status, Body, Headers) ->
    Json = case Body of
               {raw, Map, Key, Raw} -> bbc_json:encode_with(Map, Key, Raw);
               _ -> bbc_json:encode(Body)
           end,
    mochiweb_request:respond({Status, [{"Content-Type", "application/json"} | Headers], Json}, Req).

%% With tokens, a job belongs to the client that submitted it: another token sees no such
%% job. Without, clients are peer addresses, which change (NAT, DHCP): ids alone guard jobs.
owned(Id, Client) ->
    Named = bbc_config:get(token) =/= null orelse map_size(bbc_config:get(tokens)) > 0,
    case bbc_jobs:get(Id) of
        {ok, #{client := Owner}} -> not Named orelse Owner =:= Client;
        _ -> true
    end.

%% `{ok, Client}' (the fair share is counted per Client) or `unauthorized'. With tokens
%% the client is the token's name; without, each peer address is a client.
client(Req) ->
    Given = case mochiweb_request:get_header_value("authorization", Req) of
                undefined -> none;
                Value ->
                    case string:split(Value, " ") of
                        [Scheme, T] -> case string:lowercase(Scheme) of
                                           "bearer" -> crypto:hash(sha256, string:trim(T));
                                           _ -> none
                                       end;
                        _ -> none
                    end
            end,
    Named = [{<<"token">>, T} || T <- [bbc_config:get(token)], T =/= null]
        ++ maps:to_list(bbc_config:get(tokens)),
    case Named of
        [] ->
            {ok, case mochiweb_request:get(peer, Req) of
                     Peer when is_list(Peer) -> list_to_binary(Peer);
                     _ -> <<"unknown">>
                 end};
        _ ->
            %% Hashes compared, so the comparison's time says nothing about the token.
            case [Name || {Name, T} <- Named, crypto:hash(sha256, T) =:= Given] of
                [Name | _] -> {ok, Name};
                [] -> unauthorized
            end
    end.
