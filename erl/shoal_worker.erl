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
%%     exits without terminate/2 (its state must not overwrite the winner's).</li>
%% </ul>
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
-optional_callbacks([handle_info/2, load/2, idle/1, terminate/2, handoff/1, takeover/3,
                     conflict/3, handle_continue/2]).
