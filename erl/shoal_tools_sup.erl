%% @doc The supervision tree shared by shoal_fixed and shoal_shared pools: an owner process
%% (the pool's tables and its published record) and `size' workers under their own
%% supervisor:
%% ```
%% Name               (this module, rest_for_one, registered as the pool's name)
%% ├── owner          OwnerMod:start_link(Cfg)
%% └── workers        (this module, one_for_one)
%%     └── WorkerMod:start_link(Cfg, I) for I in Indexes
%% '''
%% If the owner dies, the workers are restarted too, and register with its successor.
-module(shoal_tools_sup).
-behaviour(supervisor).

-export([start_link/4, init/1]).

%% @doc Start pool `Cfg' (with a `name' key): owner `OwnerMod', workers `WorkerMod' at
%% `Indexes', each restarted per `Restart' (`transient' or `permanent').
-spec start_link(map(), module(), {module(), [integer()]}, transient | permanent) ->
          {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Cfg, OwnerMod, Workers, Restart) ->
    supervisor:start_link({local, Name}, ?MODULE, {pool, Cfg, OwnerMod, Workers, Restart}).

%% @private
-spec init(tuple()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({pool, Cfg, OwnerMod, Workers, Restart}) ->
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => owner, start => {OwnerMod, start_link, [Cfg, self()]}, shutdown => 5000},
           #{id => workers, start => {supervisor, start_link, [?MODULE, {workers, Cfg, Workers, Restart}]},
             type => supervisor, shutdown => infinity}]}};
init({workers, Cfg, {WorkerMod, Indexes}, Restart}) ->
    {ok, {#{strategy => one_for_one, intensity => max(10, length(Indexes)), period => 10},
          [#{id => I, start => {WorkerMod, start_link, [Cfg, I]}, restart => Restart,
             shutdown => 5000, modules => [WorkerMod]}
           || I <- Indexes]}}.
