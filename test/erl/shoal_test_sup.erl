%% @doc A user's own supervisor, for the suites: children given as start argument.
-module(shoal_test_sup).
-behaviour(supervisor).
-export([init/1]).

init(Specs) -> {ok, {#{strategy => one_for_one, intensity => 1, period => 5}, Specs}}.
