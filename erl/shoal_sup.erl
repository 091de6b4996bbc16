%% @doc Top supervisor of the shoal application. Its children are pools
%% (one shoal_pool supervisor each), added and removed by shoal:start_pool/2 and
%% shoal:stop_pool/1.
-module(shoal_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, []}}.
