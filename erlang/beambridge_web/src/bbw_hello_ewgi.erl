%% An EWGI-style Erlang handler served through a Python WSGI server by bbw_ewgi.
-module(bbw_hello_ewgi).
-export([handle/1]).

%% @doc The EWGI handler: echoes the request; 404 under /missing.
-spec handle(bbw_ewgi:ctx()) -> bbw_ewgi:ctx().
handle(Ctx) ->
    Method = bbw_ewgi:request_method(Ctx),
    Path = bbw_ewgi:path_info(Ctx),
    case binary:match(Path, <<"/missing">>) =/= nomatch of
        true ->
            bbw_ewgi:set_body(<<"not here\n">>,
                bbw_ewgi:set_header(<<"content-type">>, <<"text/plain">>, bbw_ewgi:set_status(404, Ctx)));
        false ->
            Body = [<<"hello from ">>, atom_to_binary(node(), utf8), <<": ">>, Method, <<" ">>, Path,
                    <<" q=">>, bbw_ewgi:query_string(Ctx),
                    <<" body=">>, bbw_ewgi:read_input(Ctx), <<"\n">>],
            C1 = bbw_ewgi:set_header(<<"content-type">>, <<"text/plain; charset=utf-8">>, Ctx),
            C2 = bbw_ewgi:set_header(<<"x-erlang-node">>, atom_to_binary(node(), utf8), C1),
            bbw_ewgi:set_body(Body, C2)
    end.
