%% @doc The handler of a shoal_batcher: runs the user's handle_batch/2 on one batch at a
%% time, in the order the accumulator cut them. A failing batch is retried per the retry
%% policy, and the batches behind it wait (in this process's own queue) until it is
%% handled or given up; then the accumulator is told, and the next one goes.
-module(shoal_batcher_handler).
-behaviour(gen_server).

-include("shoal_batcher.hrl").

-export([start_link/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-record(st, {name :: atom(),
             mod :: module(),
             error_mod :: module() | undefined,
             ustate :: term(),
             retry :: shoal_retry:policy(),
             acc :: pid(),
             stats :: counters:counters_ref(),
             %% batches waiting behind the current one; `busy' while a retry's backoff runs
             q = queue:new() :: queue:queue({pos_integer(), [term()]}),
             busy = undefined :: undefined | {pos_integer(), [term()], pos_integer()}}).

%% @doc Start the handler of batcher `Cfg'.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(#{hibernate_after := H} = Cfg) ->
    gen_server:start_link(?MODULE, Cfg, [{hibernate_after, H}]).

%% @private
-spec init(map()) -> {ok, #st{}} | {stop, term()}.
init(#{name := Name, handler := Mod, args := Args, retry := Retry}) ->
    case Mod:init(Args) of
        {ok, US} ->
            #shoal_batcher{acc = Acc, stats = C} = persistent_term:get(?BATCHER_KEY(Name)),
            ok = shoal_batcher_acc:handler_up(Acc, self()),
            EM = case erlang:function_exported(Mod, handle_error, 4) of
                     true -> Mod;
                     false -> undefined
                 end,
            {ok, #st{name = Name, mod = Mod, error_mod = EM, ustate = US, retry = Retry,
                     acc = Acc, stats = C}};
        Other ->
            {stop, {bad_init, Other}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(_Other, _From, S) -> {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({batch, Seq, Batch}, #st{busy = undefined, q = Q} = S) ->
    case queue:is_empty(Q) of
        true -> {noreply, run(Seq, Batch, 1, S)};
        false -> {noreply, S#st{q = queue:in({Seq, Batch}, Q)}}
    end;
handle_cast({batch, Seq, Batch}, #st{q = Q} = S) ->
    {noreply, S#st{q = queue:in({Seq, Batch}, Q)}};
handle_cast(_Other, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info(retry, #st{busy = {Seq, Batch, Attempt}} = S) ->
    {noreply, run(Seq, Batch, Attempt, S#st{busy = undefined})};
handle_info(next, #st{busy = undefined, q = Q} = S) ->
    case queue:out(Q) of
        {{value, {Seq, Batch}}, Q1} -> {noreply, run(Seq, Batch, 1, S#st{q = Q1})};
        {empty, _} -> {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

run(Seq, Batch, Attempt, #st{mod = Mod, ustate = US} = S) ->
    try Mod:handle_batch(Batch, US) of
        {ok, US1} ->
            counters:add(S#st.stats, ?B_HANDLED, 1),
            done(Seq, S#st{ustate = US1});
        Other ->
            failed(Seq, Batch, Attempt, {error, {bad_return, Other}, []}, S)
    catch C:R:St ->
            failed(Seq, Batch, Attempt, {C, R, St}, S)
    end.

failed(Seq, Batch, Attempt, Error, #st{error_mod = EM, retry = P, ustate = US} = S) ->
    case shoal_retry:decide(EM, P, Batch, Attempt, Error, US) of
        {retry, 0, US1} ->
            counters:add(S#st.stats, ?B_RETRIES, 1),
            run(Seq, Batch, Attempt + 1, S#st{ustate = US1});
        {retry, Ms, US1} ->
            counters:add(S#st.stats, ?B_RETRIES, 1),
            _ = erlang:send_after(Ms, self(), retry),
            S#st{ustate = US1, busy = {Seq, Batch, Attempt + 1}};
        {give_up, US1} ->
            counters:add(S#st.stats, ?B_FAILED, 1),
            logger:error(#{what => shoal_batcher_batch_failed, batcher => S#st.name,
                           attempts => Attempt, error => Error, batch => Batch}),
            done(Seq, S#st{ustate = US1})
    end.

done(Seq, #st{acc = Acc, q = Q} = S) ->
    ok = shoal_batcher_acc:handled(Acc, Seq),
    _ = queue:is_empty(Q) orelse (self() ! next),
    S.
