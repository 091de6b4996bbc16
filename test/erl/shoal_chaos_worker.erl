%% @doc The worker of shoal_chaos_SUITE: it keeps the ids of every call and cast it
%% applied, in order, so the suite can check at the end that each acknowledged call and
%% each cast was applied exactly once by the incarnation that holds the state.
%%
%% Calls: `{incr, Id}' appends Id and answers `{Lineage, Count}': the lineage of the state
%% (a reference made by the init/2 that started it afresh, which migrations and takeovers
%% carry along) and how many ids the state holds, so two answers of one lineage with the
%% same count say the state forked or went back (applied on two copies, or lost and
%% resumed), whether or not the state survives the run; `ids' answers the ids (oldest
%% first). Casts: `{mark, Id}' appends Id; `{merge, Ids}' appends the ids a
%% conflict's loser applied (its conflict/3 sends them). The state moves with the worker
%% (the default handoff/takeover). Every incarnation records, in the collector's
%% `shoal_test_events' table, `{live, Key, Pid, node(), Microseconds}' when it starts (init
%% or takeover), `{handoff, Key, Pid, Microseconds}' when it hands its state over and
%% `{conflict, Key, Pid, Microseconds}' when it loses a conflict; the collector records its
%% exit (`down_at').
-module(shoal_chaos_worker).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2, handoff/1, takeover/3, conflict/3]).

init(Key, _Args) ->
    live(Key),
    {ok, #{key => Key, ids => [], lineage => make_ref()}}.

handle_call({incr, Id}, _From, #{ids := Ids, lineage := L} = St) ->
    Ids1 = [Id | Ids],
    {reply, {L, length(Ids1)}, St#{ids := Ids1}};
handle_call(ids, _From, #{ids := Ids} = St) ->
    {reply, lists:reverse(Ids), St}.

handle_cast({mark, Id}, #{ids := Ids} = St) ->
    {noreply, St#{ids := [Id | Ids]}};
handle_cast({merge, Lost}, #{ids := Ids} = St) ->
    {noreply, St#{ids := lists:reverse(Lost, Ids)}}.

handoff(#{key := Key} = St) ->
    event({handoff, Key, self(), now_us()}),
    {ok, St}.

takeover(Key, Transfer, _Args) ->
    live(Key),
    {ok, Transfer}.

%% The loser hands what it applied to the winner, which merges it: so every id applied on
%% either side of a partition ends up in the surviving state (the user's merge).
conflict(Key, Winner, #{ids := Ids}) ->
    event({conflict, Key, self(), now_us()}),
    gen_server:cast(Winner, {merge, lists:reverse(Ids)}),
    ok.

live(Key) ->
    event({live, Key, self(), node(), now_us()}),
    case whereis(shoal_test_collector) of
        undefined -> ok;
        C -> C ! {watch, Key, self()}, ok
    end.

event(E) ->
    try ets:insert(shoal_test_events, E) catch error:badarg -> ok end,
    ok.

now_us() -> os:system_time(microsecond).
