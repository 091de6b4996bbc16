%% @doc The supervision tree of one shoal_batcher:
%% ```
%% Name                     (this module, rest_for_one, registered as the batcher's name)
%% ├── shoal_batcher_acc      the accumulator (keeps cut batches until handled)
%% └── shoal_batcher_handler  runs handle_batch/2; restarted alone if it dies
%% '''
-module(shoal_batcher_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

%% @doc Start batcher `Cfg' (validated by shoal_batcher).
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Cfg) ->
    supervisor:start_link({local, Name}, ?MODULE, Cfg).

%% @private
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Cfg) ->
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => accumulator, start => {shoal_batcher_acc, start_link, [Cfg]},
             shutdown => 5000},
           #{id => handler, start => {shoal_batcher_handler, start_link, [Cfg]},
             shutdown => 5000}]}}.
