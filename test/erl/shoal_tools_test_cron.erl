%% @doc A shoal_cron handler for the suites: reports each handle_error/4 to `to' and
%% answers with `policy' (`default', `halt', `{backoff, Ms}').
-module(shoal_tools_test_cron).
-behaviour(shoal_cron).
-export([handle_error/4]).

handle_error(Job, Attempt, _Error, #{to := To} = S) ->
    To ! {handle_error, Job, Attempt},
    maps:get(policy, S, default).
