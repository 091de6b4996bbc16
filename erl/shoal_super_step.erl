%% @doc A worker of one chain step: it runs the step function on each item it is handed and
%% passes the result on (see shoal_super_flow for the ledger and the hand-off).
%%
%% The same logic runs in two kinds of process: a process of this module (a local step
%% worker, a child of the chain's workers supervisor), and a shoal_super_host worker of a
%% Shoal pool (a step worker placed on another node). Both call new/3, handle_msg/2 and
%% flush/1.
%%
%% <b>A step function that raises</b> (error, exit or throw) does not bring its worker
%% down: the worker runs it once more on the same item, and if it raises again the item
%% ends as `{crashed, StepId, {Class, Reason}, Data}' (logged with its stack). The worker's
%% queue is untouched either way.
%%
%% <b>Retiring</b> (auto-scaling down): the manager first takes the worker out of the
%% step's route and tells the senders of the previous step, each of which answers with a
%% marker once it has switched routes (its earlier items are ahead of the marker in our
%% mailbox); the worker stops once it has every marker (or after 5 s), at least 200 ms
%% have passed for callers of send_to_chain that read the old route, and its mailbox is
%% empty.
-module(shoal_super_step).
-include("shoal_super.hrl").

-export([start_link/3, new/3, adopt/1, handle_msg/2, flush/1, sample/1]).
-export([init_it/4, system_continue/3, system_terminate/4, system_code_change/4]).

-export_type([state/0]).

-define(RETIRE_GRACE, 200).
-define(RETIRE_CAP, 5000).
-define(DONE_KEY, '$shoal_super_done').

-record(step, {sc :: #sc{},
               idx :: pos_integer(),
               id :: term(),
               widx :: pos_integer(),
               fn :: shoal_super_opts:step_spec(),
               next :: #route{} | last,
               count = 0 :: non_neg_integer(),      %% round-robin counter
               done = 0 :: non_neg_integer(),       %% items handled
               retiring = false :: false | {[pid()], integer(), integer()}}).

-opaque state() :: #step{}.

%% @doc Start a local step worker: worker WIdx of step `#{id, idx, fn, next}' of chain SC.
-spec start_link(#sc{}, map(), pos_integer()) -> {ok, pid()}.
start_link(SC, Conf, WIdx) -> proc_lib:start_link(?MODULE, init_it, [self(), SC, Conf, WIdx]).

%% @doc The state of a step worker; the caller must tell the manager it is up.
-spec new(#sc{}, map(), pos_integer()) -> state().
new(SC, #{id := Id, idx := Idx, fn := Fn, next := Next}, WIdx) ->
    put(?DONE_KEY, 0),
    #step{sc = SC, idx = Idx, id = Id, widx = WIdx, fn = Fn, next = Next}.

%% @doc Take over a state handed from another process (a step worker that moved nodes).
-spec adopt(state()) -> ok.
adopt(#step{done = Done}) ->
    put(?DONE_KEY, Done),
    ok.

%% @doc Handle one message: an item, a route update, a retirement order or marker, a
%% probe from the manager (see shoal_super_chain_mgr).
-spec handle_msg(term(), state()) -> {ok, state()} | {retired, state()} | unknown.
handle_msg({'$ssi', Seq, Att, Hop, Data}, St) ->
    retire_check(item(Seq, Att, Hop, Data, St));
handle_msg({'$ssr', Next}, #step{next = Old} = St) ->
    %% Senders of ours that left the next step's route must hear that we switched.
    _ = [P ! {'$ss_marker', self()} || P <- gone(Old, Next)],
    {ok, St#step{next = Next}};
handle_msg({'$ss_retire', Upstream}, St) ->
    Now = erlang:monotonic_time(millisecond),
    erlang:send_after(?RETIRE_GRACE, self(), '$ss_retire_check'),
    retire_check(St#step{retiring = {Upstream, Now + ?RETIRE_GRACE, Now + ?RETIRE_CAP}});
handle_msg({'$ss_marker', From}, #step{retiring = {Up, Grace, Cap}} = St) ->
    retire_check(St#step{retiring = {lists:delete(From, Up), Grace, Cap}});
handle_msg({'$ss_marker', _}, St) ->
    {ok, St};
handle_msg({'$ss_probe', Ref, N, Mgr} = Probe, St) ->
    %% Answer once this node no longer sees N: nothing more from N can reach us then, and
    %% what it sent us before is ahead of this message.
    _ = case lists:member(N, nodes()) of
            true -> erlang:send_after(50, self(), Probe);
            false -> Mgr ! {'$ss_probed', Ref}
        end,
    {ok, St};
handle_msg('$ss_retire_check', #step{retiring = false} = St) ->
    {ok, St};
handle_msg('$ss_retire_check', St) ->
    case retire_check(St) of
        {ok, _} = R -> erlang:send_after(50, self(), '$ss_retire_check'), R;
        R -> R
    end;
handle_msg(_, _St) ->
    unknown.

gone(#route{idx = I, pids = Old}, #route{idx = I, pids = New}) ->
    tuple_to_list(Old) -- tuple_to_list(New);
gone(_, _) -> [].

retire_check(#step{retiring = false} = St) -> {ok, St};
retire_check(#step{retiring = {Up, Grace, Cap}} = St) ->
    Now = erlang:monotonic_time(millisecond),
    case (Up =:= [] orelse Now >= Cap) andalso Now >= Grace andalso
        process_info(self(), message_queue_len) =:= {message_queue_len, 0} of
        true -> {retired, St};
        false -> {ok, St}
    end.

%% @doc On the way out (shutdown of the chain or of its workers): hand every item still
%% queued here to the manager, which holds them for the step's next workers or, if the
%% chain is going away, reports them `stopped'.
-spec flush(state()) -> ok.
flush(#step{sc = #sc{mgr = Mgr}, idx = Idx}) ->
    case drain([]) of
        [] -> ok;
        Items -> Mgr ! {requeue, Idx, Items}, ok
    end.

drain(Acc) ->
    receive {'$ssi', Seq, Att, Hop, Data} -> drain([{Seq, Att, Hop, Data} | Acc])
    after 0 -> lists:reverse(Acc)
    end.

%% @doc Queue length and items handled of each of Pids (local to this node).
-spec sample([pid()]) -> [{pid(), non_neg_integer(), non_neg_integer()}].
sample(Pids) ->
    [case erlang:process_info(P, [message_queue_len, dictionary]) of
         [{message_queue_len, Q}, {dictionary, D}] ->
             {P, Q, proplists:get_value(?DONE_KEY, D, 0)};
         undefined -> {P, 0, 0}
     end || P <- Pids].

%%% Items ---------------------------------------------------------------------------------

item(Seq, Att, Hop, Data, #step{sc = #sc{flow = F, owner = Owner, mgr = Mgr}, idx = Idx} = St)
  when node() =:= Owner ->
    case atomics:get(F, 3) of
        0 -> run_item(Seq, Att, Hop, Data, St);
        _ ->
            %% The chain is stopping: hand the item back rather than start it.
            Mgr ! {requeue, Idx, [{Seq, Att, Hop, Data}]},
            St
    end;
item(Seq, Att, Hop, Data, St) ->
    run_item(Seq, Att, Hop, Data, St).

run_item(Seq, Att, Hop, Data, #step{sc = SC, id = Id, fn = Fn, done = Done} = St) ->
    put(?DONE_KEY, Done + 1),
    St1 = St#step{done = Done + 1},
    case attempt(Fn, Data, St1, 2) of
        {ok, {next, D}} -> pass({Seq, Att, Hop}, D, St1);
        {ok, {drop, R}} -> shoal_super_flow:finish(SC, Seq, {dropped, Id, R, Data}), St1;
        {ok, {error, R}} -> shoal_super_flow:finish(SC, Seq, {error, Id, R, Data}), St1;
        {ok, {stop, R}} ->
            shoal_super_flow:finish(SC, Seq, {stopped, Id, R, Data}),
            SC#sc.mgr ! {stop_chain, Id, R},
            St1;
        {ok, V} -> pass({Seq, Att, Hop}, V, St1);
        {crashed, Why} -> shoal_super_flow:finish(SC, Seq, {crashed, Id, Why, Data}), St1
    end.

pass({Seq, _, _}, D, #step{sc = SC, next = last} = St) ->
    shoal_super_flow:finish(SC, Seq, {ok, D}),
    St;
pass({Seq, Att, Hop}, D, #step{sc = SC, next = Route, count = N} = St) ->
    St#step{count = shoal_super_flow:hand_off(SC, Route, {Seq, Att, Hop + 1}, D, N, normal)}.

attempt(Fn, Data, #step{sc = #sc{sup = Sup, chain = C}, id = Id} = St, Left) ->
    try {ok, run(Fn, Data)}
    catch
        Class:Reason:Stack when Left > 1 ->
            logger:warning("shoal_super ~p chain ~p step ~p crashed (~p:~p), retrying the item once~n~p",
                           [Sup, C, Id, Class, Reason, Stack]),
            attempt(Fn, Data, St, Left - 1);
        Class:Reason:Stack ->
            logger:error("shoal_super ~p chain ~p step ~p crashed again (~p:~p): item reported crashed~n~p",
                         [Sup, C, Id, Class, Reason, Stack]),
            {crashed, {Class, Reason}}
    end.

run({M, F, A}, Data) -> apply(M, F, [Data | A]);
run(Fun, Data) -> Fun(Data).

%%% The local worker process ----------------------------------------------------------------

%% @private
-spec init_it(pid(), #sc{}, map(), pos_integer()) -> no_return().
init_it(Parent, #sc{mgr = Mgr} = SC, #{idx := Idx} = Conf, WIdx) ->
    process_flag(trap_exit, true),
    St = new(SC, Conf, WIdx),
    Mgr ! {worker_up, Idx, WIdx, self()},
    proc_lib:init_ack(Parent, {ok, self()}),
    loop(Parent, [], St).

%% A plain receive loop (a special process: sys, parent exit) rather than a gen_server:
%% items are the hot path.
loop(Parent, Deb, St) ->
    receive
        {'$ssi', _, _, _, _} = Item ->
            next(Parent, Deb, handle_msg(Item, St), St);
        {'EXIT', Parent, Reason} ->
            flush(St),
            exit(Reason);
        {system, From, Req} ->
            sys:handle_system_msg(Req, From, Parent, ?MODULE, Deb, St);
        Msg ->
            %% Route updates, retirement, markers; anything else (an 'EXIT' from a process
            %% the step function linked to, say) is ignored.
            next(Parent, Deb, handle_msg(Msg, St), St)
    end.

next(Parent, Deb, {ok, St}, _) -> loop(Parent, Deb, St);
next(_Parent, _Deb, {retired, _}, _) -> exit(normal);
next(Parent, Deb, unknown, St) -> loop(Parent, Deb, St).

%% @private
-spec system_continue(pid(), [sys:dbg_opt()], state()) -> no_return().
system_continue(Parent, Deb, St) -> loop(Parent, Deb, St).

%% @private
-spec system_terminate(term(), pid(), [sys:dbg_opt()], state()) -> no_return().
system_terminate(Reason, _Parent, _Deb, St) ->
    flush(St),
    exit(Reason).

%% @private
-spec system_code_change(state(), module(), term(), term()) -> {ok, state()}.
system_code_change(St, _Module, _Old, _Extra) -> {ok, St}.
