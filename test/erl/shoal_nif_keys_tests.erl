%% @doc The keys a walk gives back: fold/3 decodes each key from its canonical bytes (the
%% common shapes directly, the rest through binary_to_term) and must give exactly the term
%% binary_to_term/1 makes of those bytes: for every shared vector (test/vectors/keyhash.txt)
%% and for random keys, through every walk that lists keys.
-module(shoal_nif_keys_tests).

-include_lib("eunit/include/eunit.hrl").

-import(proper_types, [oneof/1, frequency/1, integer/0, integer/2, range/2, float/0,
                       exactly/1, atom/0, list/1, binary/0, bitstring/0, non_empty/1]).

%% The canonical bytes of every vector (third column, hex).
vector_keys() ->
    Here = filename:dirname(proplists:get_value(source, ?MODULE:module_info(compile))),
    {ok, Text} = file:read_file(filename:join([Here, "..", "vectors", "keyhash.txt"])),
    [binary_to_term(binary:decode_hex(lists:nth(3, binary:split(L, <<"\t">>, [global]))))
     || L <- binary:split(Text, <<"\n">>, [global]), L =/= <<>>, binary:first(L) =/= $#].

%% What every key-listing walk says about Keys, each stored once as a local worker, once
%% as a replica (in two tables).
walked(Keys) ->
    TL = shoal_nif:new(2),
    TR = shoal_nif:new(2),
    R = shoal_nif_tests:remote_pid(n@h, 1),
    [{ok, _} = shoal_nif:register(TL, K, self(), {over, 0, none}) || K <- Keys],
    [stored = shoal_nif:put_remote(TR, K, n@h, R, 1, 0) || K <- Keys],
    Walks = [shoal_nif:fold(TL, keys_on, local),
             [K || {K, _, _} <- shoal_nif:fold(TL, owned, x)],
             [K || {K, _, _, _} <- shoal_nif:fold(TL, dump, x)],
             shoal_nif:fold(TR, keys_on, n@h),
             [K || {K, _, _, _} <- shoal_nif:fold(TR, dump, x)]],
    ok = shoal_nif:delete(TL),
    ok = shoal_nif:delete(TR),
    [lists:sort(W) || W <- Walks].

%% Exactly equal (=:=, so 1 and 1.0, or -0.0 and 0.0 in later releases, are not confused).
same(A, B) -> term_to_binary(A, [{minor_version, 2}]) =:= term_to_binary(B, [{minor_version, 2}]).

the_shared_vectors_come_back_from_every_walk_test() ->
    Keys = lists:usort([binary_to_term(shoal_nif:canonical(K)) || K <- vector_keys()]),
    ?assert(length(Keys) >= 40),
    [?assert(same(Keys, W)) || W <- walked(Keys)].

%% A key a walk lists is the key binary_to_term/1 makes of its canonical bytes.
prop_walks_give_back_the_canonical_key() ->
    proper:forall(key(),
                  fun(K) ->
                          case catch shoal_nif:canonical(K) of
                              {'EXIT', {badarg, _}} -> true; %% over 64 KiB
                              Canon ->
                                  Want = [binary_to_term(Canon)],
                                  lists:all(fun(W) -> same(Want, W) end, walked([K]))
                          end
                  end).

walks_give_back_random_keys_test_() ->
    {timeout, 60,
     fun() ->
             ?assert(proper:quickcheck(prop_walks_give_back_the_canonical_key(),
                                       [{numtests, 300}, {max_size, 10}, {to_file, user}]))
     end}.

%% Shapes the walk decodes itself, with the boundaries of each encoding, and the shapes it
%% leaves to binary_to_term.
key() -> proper_types:sized(fun key/1).

key(0) -> leaf();
key(Size) ->
    Sub = proper_types:lazy(fun() -> key(Size div 3) end),
    frequency([{5, leaf()},
               {1, proper_types:bind(list(Sub), fun erlang:list_to_tuple/1, false)},
               {1, list(Sub)},
               {1, proper_types:bind({non_empty(list(Sub)), leaf()},
                                     fun({L, T}) -> L ++ T end, false)},
               {1, proper_types:bind(list({Sub, Sub}), fun maps:from_list/1, false)}]).

leaf() ->
    oneof([integer(), integer(-(1 bsl 64), 1 bsl 64),
           oneof([exactly(V) || V <- [255, 256, -1, (1 bsl 31) - 1, -(1 bsl 31), 1 bsl 31,
                                      (1 bsl 63) - 1, 1 bsl 63, -(1 bsl 63), -(1 bsl 63) - 1,
                                      (1 bsl 64) - 1, 1 bsl 64, 1 bsl 200]]),
           float(), exactly(-0.0), atom(), exactly('ünïcødé'), exactly('原子'),
           binary(), bitstring(), exactly(<<>>), exactly([]), exactly({}),
           exactly(lists:seq(1, 300)), exactly(list_to_tuple(lists:seq(1, 300))),
           exactly(self()), exactly(make_ref())]).
