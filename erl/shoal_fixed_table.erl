%% @doc The owner of a shoal_fixed pool's dispatch table: the only writer of the pool's
%% persistent_term record (callers only read it). Workers register here from their init;
%% the owner monitors them, takes a dead worker out of the round-robin set until its
%% supervisor has restarted it, puts the new pid in its slot, and removes a worker that
%% left for good. It is on the slow paths only: a call that found its worker dead waits
%% here for the successor, and a key-bound cast to a dead worker is held here until the
%% successor is up.
-module(shoal_fixed_table).
-behaviour(gen_server).

-include("shoal_fixed.hrl").

-export([start_link/2, register/3, leave/2, await/4, hold/4]).
-export([cast/2, pick/2, keyed/2, send_keyed/3, send_slot/4]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(st, {t :: #shoal_fixed{},
             down = #{} :: #{non_neg_integer() => true},        % slots whose pid is dead
             mons = #{} :: #{reference() => {non_neg_integer(), pid()}},
             ever = #{} :: #{non_neg_integer() => true},        % slots registered before
             waiters = #{} :: #{non_neg_integer() => [gen_server:from()]},
             held = #{} :: #{non_neg_integer() => [term()]}}).  % newest first

%% @doc Start the owner of pool `Cfg''s table; `Sup' is the pool's top supervisor.
-spec start_link(map(), pid()) -> {ok, pid()} | {error, term()}.
start_link(Cfg, Sup) -> gen_server:start_link(?MODULE, {Cfg, Sup}, []).

%% @doc Put worker `Pid' in slot `Index' (called from the worker's init).
-spec register(pid(), non_neg_integer(), pid()) -> ok.
register(Owner, Index, Pid) -> gen_server:call(Owner, {register, Index, Pid}, infinity).

%% @doc The worker in slot `Index' leaves the pool for good.
-spec leave(pid(), non_neg_integer()) -> ok.
leave(Owner, Index) -> gen_server:call(Owner, {leave, Index}, infinity).

%% @doc Wait until slot `Index' holds another worker than `OldPid': `{ok, Pid}', `exited'
%% (the slot's worker left for good), `timeout', or `no_pool' when the pool is gone.
-spec await(pid(), non_neg_integer(), pid(), timeout()) ->
          {ok, pid()} | exited | timeout | no_pool.
await(Owner, Index, OldPid, Timeout) ->
    try gen_server:call(Owner, {await, Index, OldPid}, Timeout)
    catch exit:{timeout, _} -> timeout;
          exit:_ -> no_pool
    end.

%% @doc Deliver `Msg' to slot `Index''s worker once it is no longer `OldPid' (to the pool's
%% other workers if the slot's worker left for good).
-spec hold(pid(), non_neg_integer(), pid(), term()) -> ok.
hold(Owner, Index, OldPid, Msg) -> gen_server:cast(Owner, {hold, Index, OldPid, Msg}).

%%% Dispatch ------------------------------------------------------------------------------

%% @doc Send `Job' to a worker picked by the pool's mode (to every worker in `broadcast'
%% mode): shoal_fixed:cast/2, and the re-dispatch of casts a worker leaving for good had.
-spec cast(atom(), term()) -> ok | {error, term()}.
cast(Name, Job) ->
    case persistent_term:get(?FIXED_KEY(Name), undefined) of
        #shoal_fixed{mode = broadcast, live = Live} ->
            _ = [erlang:send(P, {'$gen_cast', ?JOB(Job)}) || P <- tuple_to_list(Live)],
            ok;
        #shoal_fixed{mode = hash} = T ->
            send_keyed(T, Job, {'$gen_cast', ?JOB(Job)});
        #shoal_fixed{} = T ->
            case pick(T, Job) of
                none -> {error, no_workers};
                Pid -> erlang:send(Pid, {'$gen_cast', ?JOB(Job)}), ok
            end;
        undefined ->
            {error, {no_such_pool, Name}}
    end.

%% @doc The worker a job goes to by the pool's mode (`none' when no worker is left).
-spec pick(#shoal_fixed{}, term()) -> pid() | none.
pick(#shoal_fixed{live = Live}, _) when tuple_size(Live) =:= 0 -> none;
pick(#shoal_fixed{mode = round_robin, live = Live, rr = RR}, _) ->
    element(atomics:add_get(RR, 1, 1) rem tuple_size(Live) + 1, Live);
pick(#shoal_fixed{mode = random, live = Live}, _) ->
    element(rand:uniform(tuple_size(Live)), Live);
pick(#shoal_fixed{mode = monotonic, live = Live}, _) ->
    element(erlang:unique_integer([monotonic, positive]) rem tuple_size(Live) + 1, Live);
pick(#shoal_fixed{live = Live}, Job) ->
    element(erlang:phash2(Job, tuple_size(Live)) + 1, Live).

%% @doc The worker for Key: its slot by phash2 over the configured size; once that worker
%% has left for good, the key is hashed over the workers that remain.
-spec keyed(#shoal_fixed{}, term()) -> none | {live, pid()} | {non_neg_integer(), pid()}.
keyed(#shoal_fixed{size = N, slots = Slots, live = Live}, Key) ->
    Ix = erlang:phash2(Key, N),
    case element(Ix + 1, Slots) of
        undefined when tuple_size(Live) =:= 0 -> none;
        undefined -> {live, element(erlang:phash2(Key, tuple_size(Live)) + 1, Live)};
        Pid -> {Ix, Pid}
    end.

%% @doc Send Msg to the worker for Key.
-spec send_keyed(#shoal_fixed{}, term(), term()) -> ok | {error, no_workers}.
send_keyed(T, Key, Msg) ->
    case keyed(T, Key) of
        none -> {error, no_workers};
        {live, Pid} -> erlang:send(Pid, Msg), ok;
        {Ix, Pid} -> send_slot(T, Ix, Pid, Msg)
    end.

%% @doc Send Msg to slot Ix's worker Pid; a slot's worker that is down (being restarted)
%% gets it from the table owner once it is back, so a key's casts are not lost while its
%% worker restarts.
-spec send_slot(#shoal_fixed{}, non_neg_integer(), pid(), term()) -> ok.
send_slot(#shoal_fixed{owner = Owner}, Ix, Pid, Msg) ->
    case erlang:is_process_alive(Pid) of
        true -> erlang:send(Pid, Msg), ok;
        false -> hold(Owner, Ix, Pid, Msg)
    end.

%%% gen_server ----------------------------------------------------------------------------

%% @private
-spec init({map(), pid()}) -> {ok, #st{}}.
init({#{name := Name, size := N, mode := Mode}, Sup}) ->
    process_flag(trap_exit, true),
    T = #shoal_fixed{name = Name, size = N, mode = Mode,
                     slots = erlang:make_tuple(N, undefined), live = {},
                     rr = atomics:new(1, [{signed, false}]),
                     stats = counters:new(?ST_N, [write_concurrency]),
                     owner = self(), sup = Sup},
    persistent_term:put(?FIXED_KEY(Name), T),
    {ok, #st{t = T}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}} | {noreply, #st{}}.
handle_call({register, Ix, Pid}, _From, #st{t = T, mons = Mons, ever = Ever, held = Held} = S) ->
    Mon = erlang:monitor(process, Pid),
    _ = maps:is_key(Ix, Ever) andalso counters:add(T#shoal_fixed.stats, ?ST_RESTARTS, 1),
    %% What was held for this slot goes first, before callers can see the new pid.
    _ = [erlang:send(Pid, M) || M <- lists:reverse(maps:get(Ix, Held, []))],
    S1 = set_slot(Ix, Pid, S#st{mons = Mons#{Mon => {Ix, Pid}}, ever = Ever#{Ix => true},
                                held = maps:remove(Ix, Held)}),
    {reply, ok, wake(Ix, {ok, Pid}, S1)};
handle_call({leave, Ix}, _From, #st{t = T, held = Held} = S) ->
    counters:add(T#shoal_fixed.stats, ?ST_EXITED, 1),
    S1 = set_slot(Ix, undefined, S#st{held = maps:remove(Ix, Held)}),
    redispatch(T#shoal_fixed.name, lists:reverse(maps:get(Ix, Held, []))),
    {reply, ok, wake(Ix, exited, S1)};
handle_call({await, Ix, OldPid}, From, #st{t = T, waiters = W} = S) ->
    case element(Ix + 1, T#shoal_fixed.slots) of
        OldPid -> {noreply, S#st{waiters = W#{Ix => [From | maps:get(Ix, W, [])]}}};
        undefined -> {reply, exited, S};
        Pid -> {reply, {ok, Pid}, S}
    end;
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({hold, Ix, OldPid, Msg}, #st{t = T, held = Held} = S) ->
    case element(Ix + 1, T#shoal_fixed.slots) of
        OldPid -> {noreply, S#st{held = Held#{Ix => [Msg | maps:get(Ix, Held, [])]}}};
        undefined -> redispatch(T#shoal_fixed.name, [Msg]), {noreply, S};
        Pid -> erlang:send(Pid, Msg), {noreply, S}
    end;
handle_cast(_Other, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'DOWN', Mon, process, Pid, _}, #st{t = T, mons = Mons, down = Down} = S) ->
    case maps:take(Mon, Mons) of
        {{Ix, Pid}, Mons1} ->
            S1 = S#st{mons = Mons1},
            case element(Ix + 1, T#shoal_fixed.slots) of
                Pid -> {noreply, publish(S1#st{down = Down#{Ix => true}})};
                _ -> {noreply, S1}
            end;
        error ->
            {noreply, S}
    end;
handle_info(_Other, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{t = #shoal_fixed{name = Name}}) ->
    shoal_tools_opts:erase_own(?FIXED_KEY(Name), #shoal_fixed.owner).

%%% Internals -----------------------------------------------------------------------------

set_slot(Ix, Pid, #st{t = T, down = Down} = S) ->
    publish(S#st{t = T#shoal_fixed{slots = setelement(Ix + 1, T#shoal_fixed.slots, Pid)},
                 down = maps:remove(Ix, Down)}).

publish(#st{t = #shoal_fixed{slots = Slots} = T, down = Down} = S) ->
    Live = [P || {I, P} <- lists:zip(lists:seq(0, tuple_size(Slots) - 1), tuple_to_list(Slots)),
                 P =/= undefined, not maps:is_key(I, Down)],
    T1 = T#shoal_fixed{live = list_to_tuple(Live)},
    persistent_term:put(?FIXED_KEY(T#shoal_fixed.name), T1),
    S#st{t = T1}.

wake(Ix, Answer, #st{waiters = W} = S) ->
    _ = [gen_server:reply(From, Answer) || From <- maps:get(Ix, W, [])],
    S#st{waiters = maps:remove(Ix, W)}.

redispatch(Name, Msgs) ->
    _ = [cast(Name, Job) || {'$gen_cast', ?JOB(Job)} <- Msgs],
    ok.
