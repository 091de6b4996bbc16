%% @doc A segment: one of a pool's N lightweight supervisors.
%%
%% Workers are spawned by their callers (never by a pool server) and link themselves to
%% the segment their key hashes to, so no single process sees every spawn. Each writes a
%% row of its segment's table first thing (`{Pid, Key, Restartable, Reported, Owed}', in a
%% public ETS table named as the segment: no message to the segment), so the segment knows
%% the key of every exit it sees. A worker that dies before it told the callers it owes its
%% init outcome (`Owed': callers that asked a member for the spawn, see
%% shoal_worker_proc:ack/4) has the segment tell them its exit reason. The segment traps
%% exits: it counts normal exits and crashes (feeding the pool's failure
%% meter), emits `[shoal, worker, crash]' for every crash, logs `worker_crashed' for the
%% crashes nobody else reported (exit signals: OTP reports the others), restarts workers
%% when the pool's `restart' option asks for it, and on shutdown stops every linked worker
%% (shutdown, then kill after a grace period) like a supervisor does.
%%
%% A pool's child spec calls a segment a supervisor, so it answers the supervisor calls that
%% tools make (`supervisor:which_children/1', `count_children/1', and the status that
%% `supervisor:get_callback_module/1' reads, which release_handler and observer use): its
%% workers appear as dynamic children, `{undefined, Pid, worker, [WorkerModule]}', like a
%% simple_one_for_one supervisor's. Children cannot be started, restarted, terminated or
%% deleted through it (`{error, not_supported}'): workers start with their first message
%% and stop with shoal:stop_worker/2.
-module(shoal_segment).
-behaviour(gen_server).

-include("shoal_int.hrl").

-export([start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, format_status/2]).

-define(SHUTDOWN_GRACE, 5000).

%% name: the segment's registered name, also the name of its table of workers: one row per
%% live worker, `{Pid, Key, Restartable, Reported, Owed}' (Restartable: it finished its init
%% in a pool whose `restart' is not temporary; Reported: its exit is reported elsewhere;
%% Owed: the callers still waiting for its init outcome), written by the workers themselves
%% (shoal_worker_proc) and taken by the segment when they exit.
-record(seg, {pool :: atom(), parent :: pid(), name :: atom()}).

-spec start_link(atom(), atom()) -> {ok, pid()} | {error, term()}.
start_link(Pool, Name) -> gen_server:start_link({local, Name}, ?MODULE, {Pool, Name, self()}, []).

%% @private
-spec init({atom(), atom(), pid()}) -> {ok, #seg{}}.
init({Pool, Name, Parent}) ->
    process_flag(trap_exit, true),
    Name = ets:new(Name, [named_table, public, set, {write_concurrency, true}]),
    {ok, #seg{pool = Pool, parent = Parent, name = Name}}.

%% @private The supervisor calls (see the module doc).
-spec handle_call(term(), gen_server:from(), #seg{}) -> {reply, term(), #seg{}}.
handle_call(which_children, _From, S) ->
    Mods = worker_modules(S),
    {reply, [{undefined, P, worker, Mods} || P <- workers(S)], S};
handle_call(count_children, _From, S) ->
    N = length(workers(S)),
    {reply, [{specs, 1}, {active, N}, {supervisors, 0}, {workers, N}], S};
handle_call({get_childspec, _}, _From, S) ->
    {reply, {error, not_found}, S};
handle_call({Op, _}, _From, S) when Op =:= start_child; Op =:= restart_child;
                                     Op =:= delete_child; Op =:= terminate_child ->
    {reply, {error, not_supported}, S};
handle_call(_Req, _From, S) -> {reply, {error, unknown_call}, S}.

%% The segment's workers: every process linked to it but its parent.
workers(#seg{parent = Parent}) ->
    {links, Links} = process_info(self(), links),
    [P || P <- Links, is_pid(P), P =/= Parent].

worker_modules(#seg{pool = Pool}) ->
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{worker = Mod} -> [Mod];
        undefined -> []
    end.

%% @private
-spec handle_cast(term(), #seg{}) -> {noreply, #seg{}}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), #seg{}) -> {noreply, #seg{}} | {stop, term(), #seg{}}.
handle_info({'EXIT', Parent, Reason}, #seg{parent = Parent} = S) ->
    {stop, Reason, S};
handle_info({'EXIT', Pid, Reason}, #seg{pool = Pool, name = Name} = S) ->
    {Worker, Owed} = case ets:take(Name, Pid) of
                         [{_, Key, Restartable, Reported, Ow}] ->
                             {{Key, Restartable, Reported}, Ow};
                         [{_, Key, Restartable, Reported}] ->
                             %% written by a worker from before a hot upgrade
                             {{Key, Restartable, Reported}, []};
                         [] -> {none, []}
                     end,
    case persistent_term:get(?PT_KEY(Pool), undefined) of
        #shoal_cfg{} = Cfg ->
            answer_owed(Cfg, Pid, Worker, Owed, Reason),
            exited(Cfg, Pid, Worker, Reason);
        undefined -> ok
    end,
    {noreply, S};
handle_info(_Info, S) -> {noreply, S}.

%% A worker died before it told the callers it owed its init outcome: tell them its exit
%% reason, as it would have (`{failed, Vsn}' with the version it was registered at, or 0 if
%% its entry already gave way to another).
answer_owed(_Cfg, _Pid, _Worker, [], _Reason) -> ok;
answer_owed(#shoal_cfg{pool = Pool} = Cfg, Pid, {Key, _, _}, Owed, Reason) ->
    Vsn = case shoal_registry:lookup(Cfg, Key) of
              {local, Pid, V, _} -> V;
              {tomb, V} -> V;
              _ -> 0
          end,
    Answer = [{error, shoal_arbiter:unwrap(Reason)}, {failed, Vsn}],
    _ = [shoal_proto:reply(C, Pool, claimed, Answer) || C <- Owed],
    ok.

exited(#shoal_cfg{counters = C, meter = M, restart = Restart} = Cfg, Pid, Worker, Reason) ->
    Crash = is_crash(Reason),
    case Crash of
        true ->
            counters:add(C, ?C_CRASHES, 1),
            shoal_nif:meter_add(M, 1),
            crashed(Cfg, Pid, Worker, Reason);
        false ->
            counters:add(C, ?C_NORMAL_EXITS, 1)
    end,
    Again = case Restart of
                permanent -> not shoal_initiated(Reason);
                transient -> Crash;
                temporary -> false
            end,
    case {Again, Worker} of
        {true, {K, true, _}} ->
            counters:add(C, ?C_RESTARTS, 1),
            %% The table's own monitor may not have removed the dead worker's entry yet:
            %% remove it now (if it still names Pid), or the restart would find it there.
            _ = shoal_registry:unregister(Cfg, K, Pid),
            _ = shoal_arbiter:spawn_async(Cfg, K),
            ok;
        _ -> ok
    end.

crashed(#shoal_cfg{pool = Pool}, Pid, Worker, Reason) ->
    Key = case Worker of
              {K, _, _} -> K;
              none -> undefined      %% a process linked to us that is no worker
          end,
    shoal_telemetry:execute([shoal, worker, crash], #{system_time => erlang:system_time()},
                            #{pool => Pool, key => Key, node => node(), pid => Pid,
                              reason => Reason}),
    case Worker of
        {_, _, true} -> ok;
        _ -> shoal_log:log_limited(error, worker_crashed, #{pool => Pool, key => Key},
                                   #{pid => Pid, reason => Reason})
    end.

is_crash(normal) -> false;
is_crash(shutdown) -> false;
is_crash({shutdown, _}) -> false;
is_crash(_) -> true.

%% Exits Shoal itself asked for (offload, stop_worker, migration) are never restarted.
shoal_initiated({shutdown, shoal_offloaded}) -> true;
shoal_initiated({shutdown, shoal_stopped}) -> true;
shoal_initiated({shutdown, {shoal_moved, _}}) -> true;
shoal_initiated(_) -> false.

%% @private What sys:get_status/1 and crash reports show: a summary (the pid => key map can
%% hold a million entries), and the `supervisor' entry supervisor:get_callback_module/1 reads.
-spec format_status(normal | terminate, [term()]) -> term().
format_status(Opt, [_PDict, #seg{pool = Pool, name = Name}]) ->
    Summary = #{pool => Pool, workers => ets:info(Name, size)},
    case Opt of
        terminate -> Summary;
        normal -> [{data, [{"State", Summary}]}, {supervisor, [{"Callback", ?MODULE}]}]
    end.

%% @private Stop every linked worker: shutdown first, kill whoever is left after the grace.
-spec terminate(term(), #seg{}) -> ok.
terminate(_Reason, S) ->
    Workers = workers(S),
    [exit(P, shutdown) || P <- Workers],
    Deadline = erlang:monotonic_time(millisecond) + ?SHUTDOWN_GRACE,
    Left = await_exits(maps:from_list([{P, true} || P <- Workers]), Deadline),
    [exit(P, kill) || P <- maps:keys(Left)],
    _ = await_exits(Left, erlang:monotonic_time(millisecond) + 1000),
    ok.

await_exits(Left, _Deadline) when map_size(Left) =:= 0 -> Left;
await_exits(Left, Deadline) ->
    Wait = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {'EXIT', P, _} -> await_exits(maps:remove(P, Left), Deadline)
    after Wait -> Left
    end.
