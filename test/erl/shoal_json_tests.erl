%% @doc EUnit for shoal_json, the status page's JSON encoder.
-module(shoal_json_tests).

-include_lib("eunit/include/eunit.hrl").

enc(T) -> iolist_to_binary(shoal_json:encode(T)).

scalars_test() ->
    ?assertEqual(<<"true">>, enc(true)),
    ?assertEqual(<<"false">>, enc(false)),
    ?assertEqual(<<"null">>, enc(null)),
    ?assertEqual(<<"null">>, enc(undefined)),
    ?assertEqual(<<"\"infinity\"">>, enc(infinity)),
    ?assertEqual(<<"\"app1@host\"">>, enc('app1@host')),
    ?assertEqual(<<"-42">>, enc(-42)),
    ?assertEqual(<<"0.5">>, enc(0.5)),
    ?assertEqual(<<"1.0e20">>, enc(1.0e20)).

strings_are_escaped_test() ->
    ?assertEqual(<<"\"a\\\"b\\\\c\\nd\\te\\u0001\"">>, enc(<<"a\"b\\c\nd\te", 1>>)),
    %% no "</script>" can end an inline script
    ?assertEqual(<<"\"\\u003c/script>\"">>, enc(<<"</script>">>)),
    ?assertEqual(<<"\"h\xc3\xa9\"">>, enc(<<"h\xc3\xa9">>)).

objects_and_arrays_test() ->
    ?assertEqual(<<"{}">>, enc(#{})),
    ?assertEqual(<<"[]">>, enc([])),
    ?assertEqual(<<"{\"a\":[1,2,{\"b\":null}],\"c\":\"d\",\"k\":true}">>,
                 enc(#{a => [1, 2, #{b => undefined}], <<"c">> => d, "k" => true})).

what_json_cannot_carry_is_badarg_test() ->
    ?assertError(badarg, shoal_json:encode({a, b})),
    ?assertError(badarg, shoal_json:encode(self())),
    ?assertError(badarg, shoal_json:encode(#{{a} => 1})),
    ?assertError(badarg, shoal_json:encode([1 | 2])).
