%% @doc EUnit for the key hash: the shared vectors (test/vectors/keyhash.txt, also read by
%% the CUnit suite) pin the NIF and the pure-Erlang reference to the same bytes and hash,
%% and a PropEr property checks the NIF against the reference on random keys.
-module(shoal_keyhash_tests).

-include_lib("eunit/include/eunit.hrl").
%% PropEr is called through its API, not proper.hrl: Debian ships the header only in
%% erlang-proper-dev, the runtime in erlang-proper.
-import(proper_types, [oneof/1, frequency/1, integer/0, integer/2, range/2, float/0,
                       exactly/1, atom/0, list/1, binary/0, bitstring/0, string/0,
                       non_empty/1]).

%%% Vectors ------------------------------------------------------------------------------

vectors_file() ->
    Here = filename:dirname(proplists:get_value(source, ?MODULE:module_info(compile))),
    Candidates = [filename:join([Here, "..", "vectors", "keyhash.txt"]),
                  filename:join(["test", "vectors", "keyhash.txt"])],
    hd([F || F <- Candidates, filelib:is_regular(F)] ++ [hd(Candidates)]).

%% [{Line, Key, TermToBinaryHex | etf, CanonicalBin, Hash}]
vectors() ->
    {ok, Text} = file:read_file(vectors_file()),
    L = binary:split(Text, <<"\n">>, [global]),
    Lines = lists:zip(lists:seq(1, length(L)), L),
    [parse(N, Line) || {N, Line} <- Lines, Line =/= <<>>, binary:first(Line) =/= $#].

parse(N, Line) ->
    [Col1, Col2, Col3, Col4] = binary:split(Line, <<"\t">>, [global]),
    Input = unhex(Col2),
    Key = case Col1 of
              <<"@etf">> -> binary_to_term(Input);
              _ ->
                  {ok, Toks, _} = erl_scan:string(unicode:characters_to_list(Col1)),
                  {ok, T} = erl_parse:parse_term(Toks),
                  T
          end,
    {N, Key, Col1, Input, unhex(Col3), binary_to_integer(Col4, 16)}.

unhex(Hex) -> binary:decode_hex(Hex).

vectors_are_read_test() ->
    ?assert(length(vectors()) >= 50).

nif_canonical_bytes_equal_the_vectors_test() ->
    [?assertEqual({N, Canon}, {N, shoal_nif:canonical(Key)})
     || {N, Key, _, _, Canon, _} <- vectors()].

nif_hash_equals_the_vectors_test() ->
    [?assertEqual({N, Hash}, {N, shoal_nif:hash(Key)}) || {N, Key, _, _, _, Hash} <- vectors()].

reference_encode_and_hash_equal_the_vectors_test() ->
    [begin
         ?assertEqual({N, Canon}, {N, shoal_keyhash:encode(Key)}),
         ?assertEqual({N, Hash}, {N, shoal_keyhash:hash(Key)}),
         ?assertEqual({N, Hash}, {N, shoal_keyhash:hash64(Canon)})
     end || {N, Key, _, _, Canon, Hash} <- vectors()].

term_to_binary_column_decodes_to_the_key_test() ->
    [?assertEqual({N, Key}, {N, binary_to_term(Input)})
     || {N, Key, Col1, Input, _, _} <- vectors(), Col1 =/= <<"@etf">>].

canonical_bytes_decode_back_to_the_key_test() ->
    [?assertEqual({N, normalise(Key)}, {N, normalise(binary_to_term(Canon))})
     || {N, Key, _, _, Canon, _} <- vectors()].

minus_zero_is_written_as_zero_test() ->
    ?assertEqual(shoal_nif:canonical(0.0), shoal_nif:canonical(-0.0)),
    ?assertEqual(shoal_nif:hash({a, [0.0]}), shoal_nif:hash({a, [-0.0]})),
    ?assertEqual(shoal_keyhash:encode(-0.0), shoal_nif:canonical(-0.0)).

funs_are_refused_by_both_test() ->
    F = fun() -> ok end,
    ?assertError(badarg, shoal_nif:canonical({F})),
    ?assertError(badarg, shoal_keyhash:encode({F})).

%%% Property ------------------------------------------------------------------------------

%% -0.0 becomes 0.0 in the canonical bytes; in OTP 25 0.0 =:= -0.0 anyway, but later
%% releases tell them apart, so compare normalised terms.
normalise(F) when is_float(F), F == 0.0 -> 0.0;
normalise(T) when is_tuple(T) -> list_to_tuple(normalise(tuple_to_list(T)));
normalise([H | T]) -> [normalise(H) | normalise(T)];
normalise(M) when is_map(M) -> maps:from_list([{normalise(K), normalise(V)} || {K, V} <- maps:to_list(M)]);
normalise(X) -> X.

bind(Gen, F) -> proper_types:bind(Gen, F, false).

key() -> proper_types:sized(fun key/1).

key(0) -> leaf();
key(Size) ->
    Smaller = proper_types:lazy(fun() -> key(Size div 3) end),
    frequency([{4, leaf()},
               {1, bind(list(Smaller), fun erlang:list_to_tuple/1)},
               {1, list(Smaller)},
               {1, bind({non_empty(list(Smaller)), leaf()}, fun({L, T}) -> L ++ T end)},
               {1, bind(list({Smaller, Smaller}), fun maps:from_list/1)}]).

leaf() ->
    oneof([integer(), integer(-(1 bsl 70), 1 bsl 70), bind(range(0, 600), fun(E) -> 1 bsl E end),
           float(), exactly(-0.0), exactly(0.0),
           atom(), bind(list(range(0, 16#10FFFF - 1)), fun safe_atom/1),
           binary(), bitstring(), string(),
           exactly(self()), exactly(make_ref()), exactly(hd(erlang:ports())),
           exactly([]), exactly({})]).

safe_atom(Codepoints) ->
    Cs = [C || C <- Codepoints, C < 16#D800 orelse C > 16#DFFF],
    list_to_atom(lists:sublist(Cs, 255)).

%% Keys whose canonical form is over 64 KiB are refused by the NIF (badarg); every other
%% key gets the reference's bytes and hash, and the bytes decode back to the key.
prop_nif_canonical_is_the_reference() ->
    proper:forall(key(),
                  fun(K) ->
                          %% PropEr 1.2 cannot report an exception on OTP 25: return it.
                          Ref = shoal_keyhash:encode(K),
                          try byte_size(Ref) > 64 * 1024 of
                              true ->
                                  {'EXIT', {badarg, _}} = (catch shoal_nif:canonical(K)),
                                  true;
                              false ->
                                  Canon = shoal_nif:canonical(K),
                                  Canon =:= Ref
                                      andalso shoal_nif:hash(K) =:= shoal_keyhash:hash(K)
                                      andalso normalise(binary_to_term(Canon)) =:= normalise(K)
                          catch C:R:St ->
                                  io:format(user, "~nkey ~P raised ~p:~p ~P~n",
                                            [K, 30, C, R, St, 10]),
                                  false
                          end
                  end).

nif_canonical_is_the_reference_on_random_keys_test_() ->
    {timeout, 60,
     fun() ->
             ?assert(proper:quickcheck(prop_nif_canonical_is_the_reference(),
                                       [{numtests, 300}, {max_size, 12}, {to_file, user}]))
     end}.
