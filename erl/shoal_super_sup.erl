%% @doc The supervision tree of one shoal_super supervisor, and the supervisor of each
%% standalone worker:
%% ```
%% Id (registered)           one_for_all, intensity 0: our own processes never die alone
%% ├── shoal_super_server    the registry (started first, stopped last)
%% ├── groups                one_for_one; children: one supervisor per group (temporary)
%% ├── chains                one_for_one; children: one supervisor per chain (temporary)
%% └── workers               one_for_one; children: one supervisor per standalone worker
%% '''
%% Each group, chain and standalone worker has a supervisor of its own with its own
%% restart intensity, and is a `temporary' child of its container: when it exceeds its
%% intensity it ends alone (the server then drops its registry entries); nothing else is
%% restarted or counted. The containers themselves never restart anything.
-module(shoal_super_sup).
-behaviour(supervisor).

-include("shoal_super.hrl").

-export([start_link/2, start_container/2, start_solo/4, init/1]).

%% @doc Start the tree of supervisor Id, registered locally as Id.
-spec start_link(atom(), atom() | undefined) -> {ok, pid()} | {error, term()}.
start_link(Id, Cluster) ->
    supervisor:start_link({local, Id}, ?MODULE, {top, Id, Cluster}).

%% @private A container (`groups', `chains' or `workers') of supervisor Id.
-spec start_container(atom(), groups | chains | workers) -> {ok, pid()}.
start_container(Id, Kind) ->
    supervisor:start_link(?MODULE, {container, Id, Kind}).

%% @private The supervisor of standalone worker W (see shoal_super_worker).
-spec start_solo(#ss{}, term(), shoal_super_opts:worker_spec(), map()) -> {ok, pid()} | {error, term()}.
start_solo(SS, W, Spec, Opts) ->
    supervisor:start_link(?MODULE, {solo, SS, W, Spec, Opts}).

%% @private
-spec init(tuple()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({top, Id, Cluster}) ->
    Server = #{id => server, start => {shoal_super_server, start_link, [Id, Cluster]},
               shutdown => 5000},
    Containers = [#{id => Kind, start => {?MODULE, start_container, [Id, Kind]},
                    type => supervisor, shutdown => infinity}
                  || Kind <- [groups, chains, workers]],
    {ok, {#{strategy => one_for_all, intensity => 0, period => 1}, [Server | Containers]}};
init({container, Id, Kind}) ->
    {ok, #ss{tab = Tab}} = shoal_super_reg:sup(Id),
    ok = shoal_super_reg:put_container(Tab, Kind, self()),
    {ok, {#{strategy => one_for_one, intensity => 1, period => 1}, []}};
init({solo, SS, W, Spec, #{restart := Restart, max_restarts := MaxR, max_seconds := MaxS,
                           shutdown := Shutdown}}) ->
    ok = shoal_super_server:watch(SS, worker, W, self()),
    Child = #{id => W, start => {shoal_super_worker, start_solo, [SS, W, Spec]},
              restart => Restart, shutdown => Shutdown,
              %% A worker that is done for good takes its supervisor with it, so that the
              %% registry forgets it (permanent workers are never done).
              significant => Restart =/= permanent,
              type => worker},
    AutoShutdown = case Restart of
                       permanent -> never;
                       _ -> any_significant
                   end,
    {ok, {#{strategy => one_for_one, intensity => MaxR, period => MaxS,
            auto_shutdown => AutoShutdown}, [Child]}}.

