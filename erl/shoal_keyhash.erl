%% @doc Canonical key bytes and the key hash, in pure Erlang.
%%
%% This module is the REFERENCE implementation of the key encoding and hash described in
%% `c_src/core/keyhash.h'. The NIF and the C node (both via `keyhash_normalize' and
%% `keyhash_hash64' in `c_src/core/keyhash.c') are checked against it: the shared vectors in
%% `test/vectors/keyhash.txt' are generated from this module by
%% `test/vectors/gen_keyhash.escript' and read by both the CUnit and the EUnit suites.
%%
%% The canonical bytes are a normalised external term format: `binary_to_term/1' turns them
%% back into the key, but unlike `term_to_binary/1' they do not depend on the OTP release,
%% the map's internal layout (maps are sorted by the canonical bytes of their keys), atom
%% encoding (always UTF-8), `STRING_EXT' (always a `LIST_EXT' of integers) or `-0.0'
%% (written as `0.0'). Funs have no stable identity across nodes and are refused.
%%
%% The limits of the C side (`KEYHASH_MAX_KEY' bytes, `KEYHASH_MAX_DEPTH' levels) are not
%% enforced here: this module defines the bytes, the C side decides what it accepts.
-module(shoal_keyhash).

-export([encode/1, hash/1, hash64/1]).

-define(MASK, 16#FFFFFFFFFFFFFFFF).
-define(SEED, 16#6A09E667F3BCC908).
-define(GOLD, 16#9E3779B97F4A7C15).
-define(MIXK, 16#D6E8FEB86659FD93).

%% ETF tags
-define(NEW_FLOAT_EXT, 70).
-define(BIT_BINARY_EXT, 77).
-define(NEW_PID_EXT, 88).
-define(NEW_PORT_EXT, 89).
-define(NEWER_REFERENCE_EXT, 90).
-define(SMALL_INTEGER_EXT, 97).
-define(INTEGER_EXT, 98).
-define(ATOM_EXT, 100).
-define(SMALL_TUPLE_EXT, 104).
-define(LARGE_TUPLE_EXT, 105).
-define(NIL_EXT, 106).
-define(LIST_EXT, 108).
-define(BINARY_EXT, 109).
-define(SMALL_BIG_EXT, 110).
-define(LARGE_BIG_EXT, 111).
-define(SMALL_ATOM_EXT, 115).
-define(MAP_EXT, 116).
-define(ATOM_UTF8_EXT, 118).
-define(SMALL_ATOM_UTF8_EXT, 119).
-define(V4_PORT_EXT, 120).

%% @doc The canonical bytes of `Key' (version byte 131 included). Raises `badarg' when the
%% key contains a fun.
-spec encode(term()) -> binary().
encode(Key) ->
    iolist_to_binary([131, enc(Key)]).

%% @doc The placement/lookup hash of `Key': `hash64(encode(Key))'.
-spec hash(term()) -> non_neg_integer().
hash(Key) ->
    hash64(encode(Key)).

%% @doc The 64-bit hash of a byte string, bit for bit the same as `keyhash_hash64' in C.
-spec hash64(binary()) -> non_neg_integer().
hash64(Bin) when is_binary(Bin) ->
    Len = byte_size(Bin),
    fmix64(chunks(Bin, (?SEED bxor (Len * ?GOLD)) band ?MASK)).

%% --- hash internals ---------------------------------------------------------------------

chunks(<<W:64/little, Rest/binary>>, H) ->
    chunks(Rest, step(H, W));
chunks(<<>>, H) ->
    H;
chunks(Tail, H) ->
    %% the last 1..7 bytes, read little-endian with zero high bytes
    Bits = bit_size(Tail),
    <<W:Bits/little>> = Tail,
    step(H, W).

step(H, W) ->
    (rotl64(H bxor mix(W), 29) * ?GOLD) band ?MASK.

rotl64(X, R) ->
    ((X bsl R) bor (X bsr (64 - R))) band ?MASK.

mix(W0) ->
    W1 = W0 bxor (W0 bsr 32),
    W2 = (W1 * ?MIXK) band ?MASK,
    W2 bxor (W2 bsr 32).

fmix64(H0) ->
    H1 = H0 bxor (H0 bsr 33),
    H2 = (H1 * 16#FF51AFD7ED558CCD) band ?MASK,
    H3 = H2 bxor (H2 bsr 33),
    H4 = (H3 * 16#C4CEB9FE1A85EC53) band ?MASK,
    H4 bxor (H4 bsr 33).

%% --- encoding (returns iodata without the version byte) ----------------------------------

enc(I) when is_integer(I), I >= 0, I =< 255 ->
    [?SMALL_INTEGER_EXT, I];
enc(I) when is_integer(I), I >= -16#80000000, I =< 16#7FFFFFFF ->
    <<?INTEGER_EXT, I:32/signed>>;
enc(I) when is_integer(I) ->
    Sign = case I < 0 of true -> 1; false -> 0 end,
    Mag = binary:encode_unsigned(abs(I), little),
    case byte_size(Mag) of
        N when N =< 255 -> [<<?SMALL_BIG_EXT, N, Sign>>, Mag];
        N -> [<<?LARGE_BIG_EXT, N:32, Sign>>, Mag]
    end;
enc(F) when is_float(F), F == 0.0 ->
    %% -0.0 and 0.0 are the same key; write the positive zero
    <<?NEW_FLOAT_EXT, 0:64>>;
enc(F) when is_float(F) ->
    <<?NEW_FLOAT_EXT, F:64/float>>;
enc(A) when is_atom(A) ->
    enc_atom(A);
enc(B) when is_binary(B) ->
    [<<?BINARY_EXT, (byte_size(B)):32>>, B];
enc(B) when is_bitstring(B) ->
    Bits = bit_size(B) rem 8,
    Bytes = byte_size(B),
    Pad = 8 - Bits,
    [<<?BIT_BINARY_EXT, Bytes:32, Bits>>, <<B/bitstring, 0:Pad>>];
enc(T) when is_tuple(T), tuple_size(T) =< 255 ->
    [?SMALL_TUPLE_EXT, tuple_size(T) | [enc(E) || E <- tuple_to_list(T)]];
enc(T) when is_tuple(T) ->
    [<<?LARGE_TUPLE_EXT, (tuple_size(T)):32>> | [enc(E) || E <- tuple_to_list(T)]];
enc([]) ->
    [?NIL_EXT];
enc(L) when is_list(L) ->
    enc_list(L, 0, []);
enc(M) when is_map(M) ->
    Pairs = lists:sort([{iolist_to_binary(enc(K)), V} || {K, V} <- maps:to_list(M)]),
    [<<?MAP_EXT, (map_size(M)):32>> | [[K, enc(V)] || {K, V} <- Pairs]];
enc(P) when is_pid(P) ->
    %% OTP 25 writes pids as NEW_PID_EXT: node, id:32, serial:32, creation:32
    <<?NEW_PID_EXT, Rest/binary>> = skip_version(term_to_binary(P)),
    [?NEW_PID_EXT, enc_atom(node(P)), skip_atom(Rest)];
enc(P) when is_port(P) ->
    %% OTP 25 writes NEW_PORT_EXT unless the id needs 64 bits
    {Id, Creation} =
        case skip_version(term_to_binary(P)) of
            <<?NEW_PORT_EXT, Rest/binary>> ->
                <<I:32, C:32>> = skip_atom(Rest),
                {I, C};
            <<?V4_PORT_EXT, Rest/binary>> ->
                <<I:64, C:32>> = skip_atom(Rest),
                {I, C}
        end,
    [?V4_PORT_EXT, enc_atom(node(P)), <<Id:64, Creation:32>>];
enc(R) when is_reference(R) ->
    <<?NEWER_REFERENCE_EXT, N:16, Rest/binary>> = skip_version(term_to_binary(R)),
    [<<?NEWER_REFERENCE_EXT, N:16>>, enc_atom(node(R)), skip_atom(Rest)];
enc(_Fun) ->
    error(badarg).

enc_atom(A) ->
    Utf8 = atom_to_binary(A, utf8),
    case byte_size(Utf8) of
        N when N =< 255 -> [<<?SMALL_ATOM_UTF8_EXT, N>>, Utf8];
        N -> [<<?ATOM_UTF8_EXT, N:16>>, Utf8]
    end.

%% Elements are collected until the first tail that is not a cons cell; [] ends a proper
%% list, anything else is the improper tail.
enc_list([H | T], N, Acc) ->
    enc_list(T, N + 1, [enc(H) | Acc]);
enc_list(Tail, N, Acc) ->
    [<<?LIST_EXT, N:32>>, lists:reverse(Acc), enc(Tail)].

%% Pids, ports and references carry numbers Erlang cannot read directly: take them from
%% term_to_binary/1, after the node atom (whose own encoding depends on the release) and
%% re-emit that atom canonically.
skip_version(<<131, Rest/binary>>) -> Rest.

skip_atom(<<?ATOM_EXT, N:16, _:N/binary, Rest/binary>>) -> Rest;
skip_atom(<<?ATOM_UTF8_EXT, N:16, _:N/binary, Rest/binary>>) -> Rest;
skip_atom(<<?SMALL_ATOM_EXT, N, _:N/binary, Rest/binary>>) -> Rest;
skip_atom(<<?SMALL_ATOM_UTF8_EXT, N, _:N/binary, Rest/binary>>) -> Rest.
