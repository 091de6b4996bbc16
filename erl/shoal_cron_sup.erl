%% @doc This node's part of a cluster-wide shoal_cron scheduler:
%% ```
%% Name                    (this module, rest_for_one, registered as the scheduler's name)
%% ├── shoal_cron_keeper     the replica, and the watch that keeps a scheduler alive
%% └── shoal_pool            the internal Shoal pool where the scheduler lives as a worker
%% '''
-module(shoal_cron_sup).
-behaviour(supervisor).

-export([start_link/2, init/1]).

%% @doc Start this node's part of cluster scheduler `Name'.
-spec start_link(atom(), map()) -> {ok, pid()} | {error, term()}.
start_link(Name, Cfg) ->
    supervisor:start_link({local, Name}, ?MODULE, {Name, Cfg}).

%% @private
-spec init({atom(), map()}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, Cfg}) ->
    Pool = shoal_cron_replica:pool_name(Name),
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => keeper, start => {shoal_cron_keeper, start_link, [Name, Pool, Cfg]},
             shutdown => 5000},
           shoal_pool:child_spec(Pool, #{worker => shoal_cron_host, segments => 1,
                                         handoff_grace => 1000})]}}.
