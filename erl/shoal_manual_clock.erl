%% @doc A clock that moves only when told to, for testing schedules without sleeping (a
%% shoal_clock). Pass `clock => {shoal_manual_clock, Pid}' to shoal_cron:start_link/2.
%%
%% advance/2 moves the clock forward timer by timer, in the process that calls it: for each
%% timer due before the target, in time order, it sets the clock to that timer's time,
%% sends its message, and waits until the receiving process has handled it (a sys call
%% queued behind the message, so the receiver must be sys-compliant: a gen_server, a Shoal
%% worker). Timers the receiver arms meanwhile are delivered in the same advance when they
%% fall before the target. set/2 moves the clock without delivering anything: what a
%% scheduler sees after a pause or a jump of the system clock. The clock is a process, so
%% schedulers on other nodes can share it.
-module(shoal_manual_clock).
-behaviour(shoal_clock).
-behaviour(gen_server).

-export([start/1, start_link/1, stop/1, advance/2, set/2, now_ms/1, send_at/4, cancel/2]).
-export([init/1, handle_call/3, handle_cast/2]).

-record(st, {now :: integer(),
             timers = gb_trees:empty() :: gb_trees:tree({integer(), integer()},
                                                        {reference(), pid(), term()}),
             refs = #{} :: #{reference() => {integer(), integer()}}}).

%% @doc A clock reading `StartMs', not linked to the caller.
-spec start(integer()) -> {ok, pid()}.
start(StartMs) -> gen_server:start(?MODULE, StartMs, []).

%% @doc A clock reading `StartMs', linked to the caller.
-spec start_link(integer()) -> {ok, pid()}.
start_link(StartMs) -> gen_server:start_link(?MODULE, StartMs, []).

%% @doc Stop the clock.
-spec stop(pid()) -> ok.
stop(Clock) -> gen_server:stop(Clock).

%% @doc Move the clock `Ms' forward, delivering every timer due by then in time order, each
%% once its receiver has handled the previous one. Returns the number delivered.
-spec advance(pid(), non_neg_integer()) -> non_neg_integer().
advance(Clock, Ms) when is_integer(Ms), Ms >= 0 ->
    Target = now_ms(Clock) + Ms,
    deliver(Clock, Target, 0).

deliver(Clock, Target, N) ->
    case gen_server:call(Clock, {pop_due, Target}, infinity) of
        {due, Pid, Msg} ->
            Pid ! Msg,
            _ = catch sys:get_state(Pid, 60000),
            deliver(Clock, Target, N + 1);
        none ->
            N
    end.

%% @doc Set the clock to `Ms' (forward or back) without delivering any timer.
-spec set(pid(), integer()) -> ok.
set(Clock, Ms) -> gen_server:call(Clock, {set, Ms}).

%% @doc The clock's time in ms.
-spec now_ms(pid()) -> integer().
now_ms(Clock) -> gen_server:call(Clock, now, infinity).

%% @doc Deliver `Msg' to `Pid' when advance/2 passes `AtMs' (at the next advance/2 if
%% `AtMs' has passed already).
-spec send_at(pid(), integer(), pid(), term()) -> reference().
send_at(Clock, AtMs, Pid, Msg) -> gen_server:call(Clock, {send_at, AtMs, Pid, Msg}, infinity).

%% @doc Cancel a timer.
-spec cancel(pid(), reference()) -> ok.
cancel(Clock, TRef) -> gen_server:call(Clock, {cancel, TRef}, infinity).

%% @private
-spec init(integer()) -> {ok, #st{}}.
init(StartMs) -> {ok, #st{now = StartMs}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(now, _From, S) ->
    {reply, S#st.now, S};
handle_call({set, Ms}, _From, S) ->
    {reply, ok, S#st{now = Ms}};
handle_call({send_at, At, Pid, Msg}, _From, #st{timers = T, refs = R} = S) ->
    Ref = make_ref(),
    Key = {At, erlang:unique_integer([monotonic])},
    {reply, Ref, S#st{timers = gb_trees:insert(Key, {Ref, Pid, Msg}, T), refs = R#{Ref => Key}}};
handle_call({cancel, Ref}, _From, #st{timers = T, refs = R} = S) ->
    case maps:take(Ref, R) of
        {Key, R1} -> {reply, ok, S#st{timers = gb_trees:delete(Key, T), refs = R1}};
        error -> {reply, ok, S}
    end;
handle_call({pop_due, Target}, _From, #st{timers = T, refs = R, now = Now} = S) ->
    case gb_trees:is_empty(T) of
        true -> {reply, none, S#st{now = max(Now, Target)}};
        false ->
            case gb_trees:take_smallest(T) of
                {{At, _}, {Ref, Pid, Msg}, T1} when At =< Target ->
                    {reply, {due, Pid, Msg},
                     S#st{now = max(Now, At), timers = T1, refs = maps:remove(Ref, R)}};
                _ ->
                    {reply, none, S#st{now = max(Now, Target)}}
            end
    end.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) -> {noreply, S}.
