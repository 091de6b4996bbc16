%% @doc The clock a shoal_cron scheduler reads and arms its timers with, as a behaviour so
%% that tests can inject their own (shoal_manual_clock). A clock is `{Module, Ref}'; the
%% default, `{shoal_clock, system}', is the OS's wall clock (`os:system_time/1') with
%% Erlang timers.
%%
%% Callbacks: `now_ms(Ref)' is the current wall-clock time in ms since the Unix epoch (UTC);
%% `send_at(Ref, AtMs, Pid, Msg)' delivers `Msg' to `Pid' once the clock reads `AtMs' or
%% later and returns a timer reference; `cancel(Ref, TimerRef)' cancels it (a message
%% already delivered stays delivered). A scheduler checks the time again when the message
%% comes, so a clock may deliver early (the system clock does when the OS time is set
%% back) but must not deliver late on purpose.
-module(shoal_clock).

-export([now_ms/1, send_at/4, cancel/2]).

-export_type([clock/0]).

-type clock() :: {module(), term()}.

-callback now_ms(Ref :: term()) -> integer().
-callback send_at(Ref :: term(), AtMs :: integer(), Pid :: pid(), Msg :: term()) -> term().
-callback cancel(Ref :: term(), TimerRef :: term()) -> ok.

%% @doc The system clock's time: `os:system_time(millisecond)'.
-spec now_ms(system) -> integer().
now_ms(system) -> os:system_time(millisecond).

%% @doc An Erlang timer for the OS time `AtMs' (measured from now).
-spec send_at(system, integer(), pid(), term()) -> reference().
send_at(system, AtMs, Pid, Msg) ->
    erlang:send_after(max(0, AtMs - os:system_time(millisecond)), Pid, Msg).

%% @doc Cancel a timer from send_at/4.
-spec cancel(system, reference()) -> ok.
cancel(system, TRef) ->
    _ = erlang:cancel_timer(TRef, [{async, true}, {info, false}]),
    ok.
