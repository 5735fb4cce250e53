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

request_method(#ctx{req = R}) -> maps:get(method, R, <<"GET">>).
path_info(#ctx{req = R}) -> maps:get(path, R, <<"/">>).
query_string(#ctx{req = R}) -> maps:get(query, R, <<>>).
headers(#ctx{req = R}) -> maps:get(headers, R, []).
remote_addr(#ctx{req = R}) -> maps:get(remote_addr, R, <<>>).
read_input(#ctx{req = R}) -> maps:get(body, R, <<>>).
get_header(Name, Ctx) ->
    Lower = string:lowercase(iolist_to_binary(Name)),
    case lists:keyfind(Lower, 1, headers(Ctx)) of
        {_, Value} -> Value;
        false -> undefined
    end.

status(#ctx{status = S}) -> S.
set_status(S, Ctx) when is_integer(S) -> Ctx#ctx{status = S}.
set_header(Name, Value, #ctx{headers = H} = Ctx) ->
    N = iolist_to_binary(Name),
    Ctx#ctx{headers = lists:keystore(N, 1, H, {N, iolist_to_binary(Value)})}.
set_body(Body, Ctx) -> Ctx#ctx{body = Body}.
append_body(More, #ctx{body = B} = Ctx) -> Ctx#ctx{body = [B, More]}.

response(#ctx{status = S, headers = H, body = B}) -> {S, H, iolist_to_binary(B)}.
