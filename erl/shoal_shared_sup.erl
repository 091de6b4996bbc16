%% @doc The supervision tree of one shoal_shared pool:
%% ```
%% Name                 (this module, rest_for_one, registered as the pool's name)
%% ├── shoal_shared_owner   tables, shared state's init/terminate, worker watch
%% └── workers          (this module, one_for_one)
%%     └── shoal_shared_worker 1..Size   (permanent)
%% '''
-module(shoal_shared_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

%% @doc Start pool `Cfg' (validated by shoal_shared).
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Cfg) ->
    supervisor:start_link({local, Name}, ?MODULE, {pool, Cfg}).

%% @private
-spec init({pool | workers, map()}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({pool, Cfg}) ->
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => owner, start => {shoal_shared_owner, start_link, [Cfg]}, shutdown => 5000},
           #{id => workers, start => {supervisor, start_link, [?MODULE, {workers, Cfg}]},
             type => supervisor, shutdown => infinity}]}};
init({workers, #{size := N} = Cfg}) ->
    {ok, {#{strategy => one_for_one, intensity => max(10, N), period => 10},
          [#{id => I, start => {shoal_shared_worker, start_link, [Cfg, I]},
             restart => permanent, shutdown => 5000, modules => [shoal_shared_worker]}
           || I <- lists:seq(1, N)]}}.
