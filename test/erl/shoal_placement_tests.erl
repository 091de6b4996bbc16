%% @doc shoal_placement: the rules the arbitration's shortcuts rely on.
-module(shoal_placement_tests).

-include_lib("eunit/include/eunit.hrl").

%% With no window and no drain anywhere, the host shoal_placement:choose/2 picks is the
%% key's home (shoal_arbiter:choose_host/3 takes the home without computing the weights).
plain_choice_is_the_home_test() ->
    Nodes = ['a@h', 'b@h', 'c@h', 'd@h', 'e@h'],
    W = shoal_placement:default_window(),
    [begin
         Members = lists:sublist(Nodes, M),
         Cands = [{N, (I * 7919) rem 1000, W, false} || N <- Members],
         ?assertEqual({ok, shoal_placement:home(K, Members)}, shoal_placement:choose(K, Cands),
                      {K, Members})
     end || M <- [2, 3, 5], I <- lists:seq(1, 3000), K <- [I, {user, I}, integer_to_binary(I)]].

%% A window changes the choice for some keys: the shortcut must not be taken then.
a_window_moves_some_keys_off_their_home_test() ->
    Members = ['a@h', 'b@h', 'c@h'],
    D = shoal_placement:default_window(),
    Cands = [{'a@h', 0, D#{target := 10}, false}, {'b@h', 0, D, false}, {'c@h', 0, D, false}],
    Moved = [K || K <- lists:seq(1, 3000),
                  shoal_placement:choose(K, Cands) =/= {ok, shoal_placement:home(K, Members)}],
    ?assertNotEqual([], Moved).
