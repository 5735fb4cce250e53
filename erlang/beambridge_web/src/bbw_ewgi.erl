%% EWGI-style adapter: serves Erlang handlers through a Python web server.
%%
%% The Python bridge (beambridge.web.ewgi) calls `bbw_ewgi:serve(Handler, Request)' by rpc for
%% each HTTP request. Request is a plain map:
%%   #{method => <<"GET">>, path => <<"/a">>, query => <<"x=1">>, headers => [{<<"host">>, <<"..">>}],
%%     body => <<>>, scheme => <<"http">>, server_name => .., server_port => .., remote_addr => ..}
%% Handler is a module with handle/1 taking and returning a context (EWGI's
%% `fun(Ctx) -> Ctx'), or a {Module, Function} pair of the same shape. The context is read and
%% written with the accessors below; the answer goes back as {Status, Headers, Body}.
-module(bbw_ewgi).
-export([serve/2,
         request_method/1, path_info/1, query_string/1, get_header/2, headers/1, read_input/1,
         remote_addr/1, status/1, set_status/2, set_header/3, set_body/2, append_body/2,
         response/1]).

-record(ctx, {req = #{} :: map(),
              status = 200 :: integer(),
              headers = [] :: [{binary(), binary()}],
              body = [] :: iodata()}).

%% The request and the answer being built, read and written with the accessors only.
-opaque ctx() :: #ctx{}.
%% A handler module (with handle/1) or a {Module, Function} of the same shape.
-type handler() :: module() | {module(), atom()}.
-type response() :: {integer(), [{binary(), binary()}], binary()}.
-export_type([ctx/0, handler/0, response/0]).

%% @doc One request through `Handler'; a crash or a bad return is a 500 with the reason.
-spec serve(handler(), map()) -> response() | {integer(), list(), iodata()}.
serve(Handler, Req) when is_map(Req) ->
    Ctx = #ctx{req = Req},
    try call(Handler, Ctx) of
        #ctx{} = Out -> response(Out);
        {Status, Headers, Body} = Direct when is_integer(Status), is_list(Headers) ->
            _ = Body, Direct;
        Other -> {500, [{<<"content-type">>, <<"text/plain">>}],
                  iolist_to_binary(io_lib:format("handler returned ~p~n", [Other]))}
    catch Class:Reason ->
        {500, [{<<"content-type">>, <<"text/plain">>}],
         iolist_to_binary(io_lib:format("~p:~p~n", [Class, Reason]))}
    end.

call({M, F}, Ctx) -> M:F(Ctx);
call(M, Ctx) when is_atom(M) -> M:handle(Ctx).

-spec request_method(ctx()) -> binary().
request_method(#ctx{req = R}) -> maps:get(method, R, <<"GET">>).
-spec path_info(ctx()) -> binary().
path_info(#ctx{req = R}) -> maps:get(path, R, <<"/">>).
-spec query_string(ctx()) -> binary().
query_string(#ctx{req = R}) -> maps:get(query, R, <<>>).
-spec headers(ctx()) -> [{binary(), binary()}].
headers(#ctx{req = R}) -> maps:get(headers, R, []).
-spec remote_addr(ctx()) -> binary().
remote_addr(#ctx{req = R}) -> maps:get(remote_addr, R, <<>>).
-spec read_input(ctx()) -> binary().
read_input(#ctx{req = R}) -> maps:get(body, R, <<>>).
-spec get_header(iodata(), ctx()) -> binary() | undefined.
get_header(Name, Ctx) ->
    Lower = string:lowercase(iolist_to_binary(Name)),
    case lists:keyfind(Lower, 1, headers(Ctx)) of
        {_, Value} -> Value;
        false -> undefined
    end.

-spec status(ctx()) -> integer().
status(#ctx{status = S}) -> S.
-spec set_status(integer(), ctx()) -> ctx().
set_status(S, Ctx) when is_integer(S) -> Ctx#ctx{status = S}.
-spec set_header(iodata(), iodata(), ctx()) -> ctx().
set_header(Name, Value, #ctx{headers = H} = Ctx) ->
    N = iolist_to_binary(Name),
    Ctx#ctx{headers = lists:keystore(N, 1, H, {N, iolist_to_binary(Value)})}.
-spec set_body(iodata(), ctx()) -> ctx().
set_body(Body, Ctx) -> Ctx#ctx{body = Body}.
-spec append_body(iodata(), ctx()) -> ctx().
append_body(More, #ctx{body = B} = Ctx) -> Ctx#ctx{body = [B, More]}.

-spec response(ctx()) -> response().
response(#ctx{status = S, headers = H, body = B}) -> {S, H, iolist_to_binary(B)}.
