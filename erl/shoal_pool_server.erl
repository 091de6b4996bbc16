%% @doc Owns a pool's worker table, counters and failure meter, and publishes the pool's
%% configuration in persistent_term for the lock-free hot path. It is the first child of
%% the pool supervisor, so it stops last: after the segments have stopped every worker, it
%% deletes the table and removes the configuration.
-module(shoal_pool_server).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([start_link/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-spec start_link(#shoal_cfg{}) -> {ok, pid()} | {error, term()}.
start_link(Cfg) -> gen_server:start_link(?MODULE, Cfg, []).

%% @private
-spec init(#shoal_cfg{}) -> {ok, #shoal_cfg{}} | {stop, term()}.
init(#shoal_cfg{pool = Pool, table_bits = Bits} = Cfg0) ->
    process_flag(trap_exit, true),
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} -> {stop, {already_started, Pool}};
        undefined ->
            Cfg = Cfg0#shoal_cfg{table = shoal_nif:new(Bits),
                                 counters = counters:new(?C_COUNT, [write_concurrency]),
                                 meter = shoal_nif:meter_new()},
            persistent_term:put(?PT_KEY(Pool), Cfg),
            {ok, Cfg}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #shoal_cfg{}) -> {reply, term(), #shoal_cfg{}}.
handle_call(_Req, _From, Cfg) -> {reply, {error, unknown_call}, Cfg}.

%% @private
-spec handle_cast(term(), #shoal_cfg{}) -> {noreply, #shoal_cfg{}}.
handle_cast(_Msg, Cfg) -> {noreply, Cfg}.

%% @private
-spec handle_info(term(), #shoal_cfg{}) -> {noreply, #shoal_cfg{}}.
handle_info(_Info, Cfg) -> {noreply, Cfg}.

%% @private
-spec terminate(term(), #shoal_cfg{}) -> ok.
terminate(_Reason, #shoal_cfg{pool = Pool, table = T}) ->
    _ = persistent_term:erase(?PT_KEY(Pool)),
    try shoal_nif:delete(T) catch error:badarg -> ok end,
    ok.
