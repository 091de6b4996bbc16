%% @doc The local stand-in of a group member or chain step worker that runs on another node.
%% It is the child the group's (or chain's) supervisor sees: it places the real worker as a
%% key of the cluster's host pool (a shoal_super_host there), watches it, and exits with
%% the worker's exit reason, so the supervisor's strategy and intensity apply exactly as
%% for a local child. The worker's node going away is the exit reason `{nodedown, Node}';
%% the supervisor's restart then places the new worker on a survivor.
%%
%% A move by Shoal (drain, migration) is not an exit: the worker's successor tells us its
%% new pid, and we tell the registry (members) or the chain's manager (steps).
%%
%% Each incarnation uses a fresh key, so a restart never meets an old host; an old host
%% whose proxy is gone stops by itself (it monitors its proxy).
-module(shoal_super_remote).

-include("shoal_super.hrl").

-export([start_link/2, init/3, system_continue/3, system_terminate/4, system_code_change/4]).

-define(PLACE_FOR, 10000).   %% ms to keep trying to place the worker (nodes coming and going)
-define(MOVE_WAIT, 5000).    %% ms to wait for a moved worker's successor to report

-record(p, {ss :: #ss{},
            what :: tuple(),
            key :: term(),
            host :: pid(),
            ref :: reference(),
            parent :: pid()}).

%% @doc Start the proxy of `{member, G, W, Spec, Placement}' or `{step, SC, Conf, WIdx,
%% Placement}' of supervisor SS.
-spec start_link(#ss{}, tuple()) -> {ok, pid()} | {error, term()}.
start_link(SS, What) -> proc_lib:start_link(?MODULE, init, [self(), SS, What]).

%% @private
-spec init(pid(), #ss{}, tuple()) -> no_return().
init(Parent, SS, What) ->
    process_flag(trap_exit, true),
    Deadline = erlang:monotonic_time(millisecond) + ?PLACE_FOR,
    case place(SS, What, Deadline) of
        {ok, Key, Host, Real} ->
            Ref = erlang:monitor(process, Host),
            P = #p{ss = SS, what = What, key = Key, host = Host, ref = Ref, parent = Parent},
            announce(P, Real, undefined),
            proc_lib:init_ack(Parent, {ok, self()}),
            loop(P);
        {error, Reason} ->
            proc_lib:init_ack(Parent, {error, Reason}),
            exit(normal)
    end.

tag({member, G, W, _, _}) -> {member, G, W};
tag({step, #sc{chain = C}, #{id := S}, WIdx, _}) -> {step, C, S, WIdx}.

%% Place the worker, configure it, and return its key, host and process. Transient
%% failures (a node that just left, a home node not yet known to be gone) are retried,
%% each time under a fresh key (so a stale replica of a failed attempt cannot stand in
%% the way).
place(#ss{id = Id, cluster = Pool} = SS, What, Deadline) ->
    Key = {shoal_super, node(), Id, tag(What), erlang:unique_integer([positive])},
    Result = try
                 {ok, Target} = ok_or_throw(choose, shoal_super_place:choose(Pool, placement(What),
                                                                             in_use(SS, What))),
                 {ok, H0} = ok_or_throw(spawn, shoal:ensure_started(Pool, Key)),
                 %% Shoal placed it by its windows; move it where we want it. Asked on
                 %% its own node, which knows it (ours may not have the replica yet).
                 H = case node(H0) =:= Target of
                         true -> H0;
                         false ->
                             case erpc:call(node(H0), shoal, migrate, [Pool, Key, Target], 15000) of
                                 {ok, H1} -> H1;
                                 {error, _} -> H0
                             end
                     end,
                 try gen_server:call(H, {'$ss_configure', conf(SS, What)}, 15000) of
                     {ok, Host, Real} -> {ok, Key, Host, Real};
                     {error, Bad} -> throw({fatal, Bad})
                 catch exit:{Why, _} -> throw({retry, {configure, node(H), Why}})
                 end
             catch
                 throw:{fatal, F} -> {error, F};
                 throw:{retry, T} -> {retry, T};
                 exit:{E, _} -> {retry, E};
                 error:{erpc, E} -> {retry, E}
             end,
    case Result of
        {retry, Why2} ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true -> timer:sleep(100), place(SS, What, Deadline);
                false -> {error, {cannot_place, Why2}}
            end;
        Done -> Done
    end.

ok_or_throw(_Stage, {ok, _} = R) -> R;
ok_or_throw(_Stage, {error, {no_such_pool, _} = R}) -> throw({fatal, R});
ok_or_throw(Stage, {error, R}) -> throw({retry, {Stage, R}}).

placement({member, _, _, _, P}) -> P;
placement({step, _, _, _, P}) -> P.

%% Where the worker's siblings run (spread puts it where there are fewest).
in_use(#ss{tab = Tab}, {member, G, _, _, _}) ->
    [node(Real) || {_, _, Real} <- shoal_super_reg:members(Tab, G)];
in_use(#ss{tab = Tab}, {step, #sc{chain = C}, #{id := S}, _, _}) ->
    case shoal_super_reg:route(Tab, C, S) of
        {ok, #route{pids = Pids}} -> [node(P) || P <- tuple_to_list(Pids)];
        error -> []
    end.

conf(#ss{id = Id}, {member, G, W, Spec, _}) ->
    #{kind => member, proxy => self(), spec => Spec,
      ctx => #{sup => Id, owner => node(), group => G, id => W}};
conf(_SS, {step, SC, StepConf, WIdx, _}) ->
    #{kind => step, proxy => self(), sc => SC, conf => StepConf, widx => WIdx}.

%% Tell whoever routes to this worker where it now is.
announce(#p{ss = #ss{tab = Tab}, what = {member, G, W, _, _}, host = Host, parent = GPid}, Real, _Old) ->
    case shoal_super_reg:member(Tab, G, W) of
        {ok, _, OldReal} -> ets:delete(Tab, {mpid, OldReal});
        error -> ok
    end,
    shoal_super_reg:put_member(Tab, G, W, Host, Real, GPid);
announce(#p{what = {step, #sc{mgr = Mgr}, #{idx := Idx}, WIdx, _}, host = Host}, _Real, undefined) ->
    Mgr ! {worker_up, Idx, WIdx, Host},
    ok;
announce(#p{what = {step, #sc{mgr = Mgr}, #{idx := Idx}, WIdx, _}, host = Host}, _Real, Old) ->
    Mgr ! {moved, Idx, WIdx, Old, Host},
    ok.

loop(#p{host = Host, ref = Ref, parent = Parent} = P) ->
    receive
        {'$ss_moved', New, Real} when New =/= Host ->
            erlang:demonitor(Ref, [flush]),
            P1 = P#p{host = New, ref = erlang:monitor(process, New)},
            announce(P1, Real, Host),
            loop(P1);
        {'DOWN', Ref, process, Host, {shutdown, {shoal_moved, _}}} ->
            %% Its successor will report (it may have already: then we no longer watch
            %% this one).
            receive
                {'$ss_moved', New, Real} ->
                    P1 = P#p{host = New, ref = erlang:monitor(process, New)},
                    announce(P1, Real, Host),
                    loop(P1)
            after ?MOVE_WAIT ->
                    exit({worker_lost_in_move, node(Host)})
            end;
        {'DOWN', Ref, process, Host, noconnection} ->
            exit({nodedown, node(Host)});
        {'DOWN', Ref, process, Host, Reason} ->
            exit(Reason);
        {'EXIT', Parent, Reason} ->
            stop_host(P),
            exit(Reason);
        {system, From, Req} ->
            sys:handle_system_msg(Req, From, Parent, ?MODULE, [], P);
        _ ->
            loop(P)
    end.

%% Stop the worker (a member stops its process; a step worker hands its queue back to the
%% chain's manager) and wait for it. A worker being moved gets the order with the rest of
%% its messages; its successor stops too (it also watches us).
stop_host(#p{host = Host, ref = Ref}) ->
    Host ! '$ss_stop',
    receive {'DOWN', Ref, process, Host, _} -> ok
    after 10000 -> exit(Host, kill)
    end.

%% @private
-spec system_continue(pid(), list(), #p{}) -> no_return().
system_continue(_Parent, _Deb, P) -> loop(P).

%% @private
-spec system_terminate(term(), pid(), list(), #p{}) -> no_return().
system_terminate(Reason, _Parent, _Deb, P) -> stop_host(P), exit(Reason).

%% @private
-spec system_code_change(#p{}, module(), term(), term()) -> {ok, #p{}}.
system_code_change(P, _Module, _Old, _Extra) -> {ok, P}.
