%% @doc The accumulator of a shoal_batcher: receives pushes, cuts batches (at `limit'
%% items, `timeout' ms after a batch's first item, or on flush), numbers them, sends them
%% to the handler and keeps each until the handler confirms it. It publishes the batcher's
%% record (its own pid, the pending count) in persistent_term for push/2. It runs no user
%% code.
-module(shoal_batcher_acc).
-behaviour(gen_server).

-include("shoal_batcher.hrl").

-export([start_link/1, handler_up/2, handled/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(st, {name :: atom(),
             limit :: pos_integer(),
             timeout :: timeout(),
             order :: fifo | lifo,
             rec :: #shoal_batcher{},
             buf = [] :: [term()],                 % newest first
             n = 0 :: non_neg_integer(),
             timer :: reference() | undefined,
             seq = 0 :: non_neg_integer(),         % number of the last batch cut
             unacked = queue:new() :: queue:queue({pos_integer(), [term()]}),
             handler :: pid() | undefined,
             waiters = [] :: [{pos_integer(), gen_server:from()}]}).

%% @doc Start the accumulator of batcher `Cfg'.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(#{hibernate_after := H} = Cfg) ->
    gen_server:start_link(?MODULE, Cfg, [{hibernate_after, H}]).

%% @doc The handler `Pid' is up: (re)send it every batch not yet confirmed, in order.
-spec handler_up(pid(), pid()) -> ok.
handler_up(Acc, Pid) -> gen_server:call(Acc, {handler_up, Pid}, infinity).

%% @doc The handler is done with batch `Seq' (handled or given up).
-spec handled(pid(), pos_integer()) -> ok.
handled(Acc, Seq) -> gen_server:cast(Acc, {handled, Seq}).

%% @private
-spec init(map()) -> {ok, #st{}}.
init(#{name := Name, limit := L, timeout := T, order := O, max_pending := Max}) ->
    Rec = #shoal_batcher{acc = self(), pending = atomics:new(1, []), max_pending = Max,
                         stats = counters:new(?B_N, [write_concurrency])},
    persistent_term:put(?BATCHER_KEY(Name), Rec),
    {ok, #st{name = Name, limit = L, timeout = T, order = O, rec = Rec}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}} | {noreply, #st{}}.
handle_call(flush, From, S0) ->
    S = case S0#st.n of
            0 -> S0;
            _ -> cut(S0)
        end,
    case queue:is_empty(S#st.unacked) of
        true -> {reply, ok, S};
        false -> {noreply, S#st{waiters = [{S#st.seq, From} | S#st.waiters]}}
    end;
handle_call(buffered, _From, S) ->
    {reply, S#st.n, S};
handle_call({handler_up, Pid}, _From, #st{unacked = U} = S) ->
    _ = erlang:monitor(process, Pid),
    _ = [gen_server:cast(Pid, {batch, Seq, B}) || {Seq, B} <- queue:to_list(U)],
    {reply, ok, S#st{handler = Pid}};
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({push, Item}, #st{buf = B, n = N, limit = L, timeout = T, timer = TRef} = S) ->
    S1 = S#st{buf = [Item | B], n = N + 1,
              timer = case N =:= 0 andalso T =/= infinity of
                          true -> erlang:start_timer(T, self(), cut);
                          false -> TRef
                      end},
    case N + 1 >= L of
        true -> {noreply, cut(S1)};
        false -> {noreply, S1}
    end;
handle_cast({handled, Seq}, #st{unacked = U, waiters = W, rec = Rec} = S) ->
    U1 = drop_upto(Seq, U),
    atomics:put(Rec#shoal_batcher.pending, 1, queue:len(U1)),
    {Done, Wait} = lists:partition(fun({WSeq, _}) -> WSeq =< Seq end, W),
    _ = [gen_server:reply(From, ok) || {_, From} <- Done],
    {noreply, S#st{unacked = U1, waiters = Wait}};
handle_cast(_Other, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({timeout, TRef, cut}, #st{timer = TRef} = S) ->
    {noreply, cut(S#st{timer = undefined})};
handle_info({'DOWN', _, process, Pid, _}, #st{handler = Pid} = S) ->
    {noreply, S#st{handler = undefined}};
handle_info(_Other, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{name = Name}) ->
    shoal_tools_opts:erase_own(?BATCHER_KEY(Name), #shoal_batcher.acc).

cut(#st{buf = B, order = O, seq = Seq, unacked = U, handler = H, timer = TRef,
        rec = #shoal_batcher{pending = A, stats = C}} = S) ->
    _ = TRef =/= undefined andalso erlang:cancel_timer(TRef),
    Batch = case O of
                fifo -> lists:reverse(B);
                lifo -> B
            end,
    Seq1 = Seq + 1,
    U1 = queue:in({Seq1, Batch}, U),
    atomics:put(A, 1, queue:len(U1)),
    counters:add(C, ?B_BATCHES, 1),
    _ = H =/= undefined andalso gen_server:cast(H, {batch, Seq1, Batch}),
    S#st{buf = [], n = 0, timer = undefined, seq = Seq1, unacked = U1}.

drop_upto(Seq, U) ->
    case queue:peek(U) of
        {value, {S, _}} when S =< Seq -> drop_upto(Seq, queue:drop(U));
        _ -> U
    end.
