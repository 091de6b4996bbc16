%% @doc The behaviour a Shoal worker implements.
%%
%% A worker is one long-lived process per key. Its callbacks mirror gen_server's, with the
%% key passed to `init/2'. Optional callbacks:
%% <ul>
%% <li>`load(Key, State)' runs once, before the first message is handled (lazy loading
%%     from the user's store). `{error, Reason}' stops the worker with
%%     `{shutdown, {load_failed, Reason}}', which is what a caller's `shoal:call' exits
%%     with.</li>
%% <li>`idle(State)' runs when the pool's `idle_timeout' passes with no message; return
%%     `{keep, State}' to veto offloading.</li>
%% <li>`terminate(Reason, State)': when exported, the worker traps exits so it also runs on
%%     pool shutdown, graceful stop, idle offload and migration.</li>
%% <li>`handoff(State)' and `takeover(Key, Transfer, Args)' move state between nodes
%%     during migration and drain; by default the state itself is transferred.</li>
%% <li>`conflict(Key, Winner, State)' runs in the losing worker when two workers for one
%%     key meet after a partition heals; the loser then hands its queue to Winner and
%%     exits without terminate/2 (its state must not overwrite the winner's). Should the
%%     Winner become unreachable before it acknowledges the hand-off, the loser takes its
%%     key back, state and all, and may lose or win again at the next heal: so a merge
%%     that conflict/3 sends the Winner should be idempotent (a union, a maximum), not an
%%     append.</li>
%% <li>`code_change(OldVsn, State, Extra)' runs when a release upgrade changes the worker
%%     module (a `{update, Mod, {advanced, Extra}}' instruction): `{ok, NewState}', as
%%     gen_server's. Without it the state is kept as it is.</li>
%% <li>`format_status(Status)' (or the older `format_status(Opt, [PDict, State])'), as
%%     gen_server's: how `sys:get_status/1' and crash reports show the state. Without it
%%     they show the worker's state as it is (never Shoal's own record).</li>
%% </ul>
%% A worker process's `$initial_call' is `{Mod, init, 2}' and its process dictionary holds
%% `{'$shoal_key', {Pool, Key}}' (shoal:key_of/1 reads it).
-module(shoal_worker).

-callback init(Key :: term(), Args :: term()) -> {ok, State :: term()} | {stop, Reason :: term()}.
-callback handle_call(Request :: term(), From :: gen_server:from(), State :: term()) ->
    {reply, Reply :: term(), NewState :: term()} |
    {reply, Reply :: term(), NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), Reply :: term(), NewState :: term()} |
    {stop, Reason :: term(), NewState :: term()}.
-callback handle_cast(Request :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback handle_info(Info :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback load(Key :: term(), State :: term()) -> {ok, NewState :: term()} | {error, Reason :: term()}.
-callback idle(State :: term()) -> {offload, NewState :: term()} | {keep, NewState :: term()}.
-callback terminate(Reason :: term(), State :: term()) -> term().
-callback handoff(State :: term()) -> {ok, Transfer :: term()}.
-callback takeover(Key :: term(), Transfer :: term(), Args :: term()) -> {ok, State :: term()}.
-callback conflict(Key :: term(), Winner :: pid(), State :: term()) -> term().
-callback handle_continue(Continue :: term(), State :: term()) ->
    {noreply, NewState :: term()} |
    {noreply, NewState :: term(), timeout() | hibernate | {continue, term()}} |
    {stop, Reason :: term(), NewState :: term()}.
-callback code_change(OldVsn :: term() | {down, term()}, State :: term(), Extra :: term()) ->
    {ok, NewState :: term()} | {error, Reason :: term()}.
-callback format_status(Status :: gen_server:format_status()) -> gen_server:format_status().
-callback format_status(Opt :: normal | terminate, [PDict_State :: term()]) -> term().
-optional_callbacks([handle_info/2, load/2, idle/1, terminate/2, handoff/1, takeover/3,
                     conflict/3, handle_continue/2, code_change/3, format_status/1,
                     format_status/2]).
