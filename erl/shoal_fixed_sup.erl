%% @doc The supervision tree of one shoal_fixed pool:
%% ```
%% Name                 (this module, rest_for_one, registered as the pool's name)
%% ├── shoal_fixed_table  the dispatch table's owner
%% └── workers          (this module, one_for_one)
%%     └── shoal_fixed_worker 0..Size-1   (transient: `{exit, S}' is for good)
%% '''
%% If the table owner dies, the workers are restarted too and register with its successor.
-module(shoal_fixed_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

%% @doc Start pool `Cfg' (validated by shoal_fixed).
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Cfg) ->
    supervisor:start_link({local, Name}, ?MODULE, {pool, Cfg}).

%% @private
-spec init({pool | workers, map()}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({pool, Cfg}) ->
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => table, start => {shoal_fixed_table, start_link, [Cfg, self()]},
             shutdown => 5000},
           #{id => workers, start => {supervisor, start_link, [?MODULE, {workers, Cfg}]},
             type => supervisor, shutdown => infinity}]}};
init({workers, #{size := N} = Cfg}) ->
    {ok, {#{strategy => one_for_one, intensity => max(10, N), period => 10},
          [#{id => I, start => {shoal_fixed_worker, start_link, [Cfg, I]},
             restart => transient, shutdown => 5000}
           || I <- lists:seq(0, N - 1)]}}.
