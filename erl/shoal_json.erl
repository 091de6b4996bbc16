%% @doc A small JSON encoder for the status page (OTP 25 has no json module): maps with
%% atom, binary or string keys become objects; lists arrays; binaries and atoms strings;
%% `true', `false' and `null' themselves, `undefined' and `infinity' become `null' and the
%% string "infinity"; integers and floats numbers.
-module(shoal_json).

-export([encode/1]).

%% @doc The JSON text of `Term' as iodata; raises `badarg' for a term JSON cannot carry
%% (a tuple, a pid, a fun, a non-finite float, an improper list).
-spec encode(term()) -> iodata().
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(null) -> <<"null">>;
encode(undefined) -> <<"null">>;
encode(A) when is_atom(A) -> string(atom_to_binary(A, utf8));
encode(I) when is_integer(I) -> integer_to_binary(I);
encode(F) when is_float(F) -> float_to_binary(F, [short]);
encode(B) when is_binary(B) -> string(B);
encode(M) when is_map(M) ->
    Pairs = [[string(K), $:, encode(V)]
             || {K, V} <- lists:keysort(1, [{key(K), V} || {K, V} <- maps:to_list(M)])],
    [${, lists:join($,, Pairs), $}];
encode(L) when is_list(L) ->
    [$[, lists:join($,, elements(L)), $]];
encode(T) -> erlang:error(badarg, [T]).

elements([]) -> [];
elements([X | Rest]) -> [encode(X) | elements(Rest)];
elements(Tail) -> erlang:error(badarg, [Tail]).

%% Object keys, as binaries (sorted, so the output is stable).
key(K) when is_atom(K) -> atom_to_binary(K, utf8);
key(K) when is_binary(K) -> K;
key(K) when is_list(K) -> unicode:characters_to_binary(K);
key(K) -> erlang:error(badarg, [K]).

string(B) -> [$", escape(B), $"].

escape(B) -> << <<(char(C))/binary>> || <<C>> <= B >>.

char($") -> <<"\\\"">>;
char($\\) -> <<"\\\\">>;
char($\n) -> <<"\\n">>;
char($\r) -> <<"\\r">>;
char($\t) -> <<"\\t">>;
char($<) -> <<"\\u003c">>;   % safe inside an HTML <script> too
char(C) when C < 16#20 -> iolist_to_binary(io_lib:format("\\u~4.16.0b", [C]));
char(C) -> <<C>>.
