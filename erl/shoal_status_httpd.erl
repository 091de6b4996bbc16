%% @doc The inets httpd module behind shoal_status: answers `GET /' (the page, from
%% priv/status.html), `GET /status.json' and `GET /history.json'; 404 for anything else,
%% 405 for other methods.
-module(shoal_status_httpd).

-include_lib("inets/include/httpd.hrl").

-export([do/1]).

%% @private The httpd module callback.
-spec do(#mod{}) -> {proceed, list()}.
do(#mod{method = "GET", request_uri = Uri}) ->
    [Path | _] = string:split(Uri, "?"),
    case Path of
        "/" -> page();
        "/index.html" -> page();
        "/status.json" -> json(shoal_status:snapshot());
        "/history.json" -> json(shoal_status:history());
        _ -> reply(404, "text/plain", <<"not found\n">>)
    end;
do(#mod{}) ->
    reply(405, "text/plain", <<"only GET\n">>).

page() ->
    case file:read_file(filename:join(code:priv_dir(shoal), "status.html")) of
        {ok, Html} -> reply(200, "text/html; charset=utf-8", Html);
        {error, R} -> reply(500, "text/plain", io_lib:format("priv/status.html: ~p~n", [R]))
    end.

json(Term) -> reply(200, "application/json", shoal_json:encode(Term)).

reply(Code, Type, Body0) ->
    Body = iolist_to_binary(Body0),
    {proceed, [{response, {response, [{code, Code}, {content_type, Type},
                                      {content_length, integer_to_list(byte_size(Body))},
                                      {cache_control, "no-store"}],
                           binary_to_list(Body)}}]}.
