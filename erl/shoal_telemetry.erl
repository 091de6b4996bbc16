%% @doc Shoal's events, telemetry style: `[shoal, ...]' event names, a map of measurements
%% and a map of metadata (the list is in docs/telemetry.md and events/0).
%%
%% An event goes to two places:
%% <ul>
%% <li>the `telemetry' library, when its module is loaded (it is once anyone attaches a
%%     handler with `telemetry:attach/4', and in every release that includes it). Shoal does
%%     not depend on telemetry: the call is made dynamically.</li>
%% <li>the handlers attached with attach/4 or attach_many/4 of this module, always. This is
%%     the same contract as telemetry's (a handler is `fun(Event, Measurements, Metadata,
%%     Config)', runs in the emitting process, and is detached if it raises), for systems
%%     without telemetry (it is not in Debian, Hex is not always reachable).</li>
%% </ul>
%% Attaching and detaching rewrite a `persistent_term' (every process is scanned once), so
%% attach at start-up, not per request. Emitting an event nobody listens to costs a
%% `persistent_term' read and a loaded-module check.
%%
%% The `[shoal, call, _]' span runs on every `shoal:call', so it is not even built unless
%% somebody listens: call_events/0, one `persistent_term' read of a boolean, says whether a
%% handler is attached here to a `[shoal, call | _]' event or, with `telemetry' loaded,
%% whether it has one for them. attach/4 and detach/1 update that flag at once; a handler
%% attached through `telemetry:attach/4' is seen by probe/0, which shoal_telemetry_probe
%% runs every second.
-module(shoal_telemetry).

-export([execute/3, span/3, attach/4, attach_many/4, detach/1, list_handlers/1, events/0]).
-export([call_events/0, probe/0, listening/1]).
-export_type([event_name/0, measurements/0, metadata/0, handler_id/0, handler/0]).

-type event_name() :: [atom(), ...].
-type measurements() :: #{atom() => number()}.
-type metadata() :: #{atom() => term()}.
-type handler_id() :: term().
-type handler() :: fun((event_name(), measurements(), metadata(), term()) -> term()).

%% persistent_term keys: the handlers of one event, and every handler by id.
-define(EVENT_KEY(E), {?MODULE, event, E}).
-define(IDS_KEY, {?MODULE, ids}).
-define(LOCK, shoal_telemetry_lock).
%% Whether anybody listens to `[shoal, call | _]' (an atom key: the cheapest to look up).
-define(CALL_FLAG, '$shoal_call_events').
%% The library Shoal emits through when it is loaded (a variable, so no static call to a
%% module that may not exist).
-define(TELEMETRY, telemetry).

%% @doc The events Shoal defines, with the measurement and metadata keys each carries
%% (docs/telemetry.md describes them).
-spec events() -> [{event_name(), Measurements :: [atom()], Metadata :: [atom()]}].
events() ->
    [{[shoal, worker, spawn], [system_time], [pool, key, node, pid]},
     {[shoal, worker, crash], [system_time], [pool, key, node, pid, reason]},
     {[shoal, worker, offload], [system_time], [pool, key, node, pid]},
     {[shoal, call, start], [system_time, monotonic_time], [pool, key, node]},
     {[shoal, call, stop], [duration, monotonic_time], [pool, key, node]},
     {[shoal, call, exception], [duration, monotonic_time],
      [pool, key, node, kind, reason, stacktrace]},
     {[shoal, move, start], [system_time, monotonic_time], [pool, key, node, to, cause]},
     {[shoal, move, stop], [duration, monotonic_time], [pool, key, node, to, cause, result]},
     {[shoal, node, up], [system_time], [pool, node]},
     {[shoal, node, down], [system_time], [pool, node, reason]}].

%% @doc Emit `Event' with its measurements and metadata to telemetry (when loaded) and to
%% the handlers attached here. Returns `ok' whatever the handlers do; raises `badarg' for an
%% event name that is not a non-empty list of atoms or measurements/metadata that are not
%% maps.
-spec execute(event_name(), measurements(), metadata()) -> ok.
execute([_ | _] = Event, Measurements, Metadata)
  when is_map(Measurements), is_map(Metadata) ->
    case erlang:function_exported(?TELEMETRY, execute, 3) of
        true -> _ = (?TELEMETRY):execute(Event, Measurements, Metadata), ok;
        false -> ok
    end,
    case persistent_term:get(?EVENT_KEY(Event), []) of
        [] -> ok;
        Handlers -> run(Handlers, Event, Measurements, Metadata)
    end;
execute(Event, Measurements, Metadata) ->
    erlang:error(badarg, [Event, Measurements, Metadata]).

run([], _Event, _M, _Meta) -> ok;
run([{Id, Fun, Config} | Rest], Event, M, Meta) ->
    try Fun(Event, M, Meta, Config)
    catch Class:Reason:Stack ->
        %% as telemetry does: a failing handler is detached, once, with a log line
        _ = detach(Id),
        shoal_log:log(error, telemetry_handler_failed, #{},
                      #{handler_id => Id, event => Event, class => Class, reason => Reason,
                        stacktrace => Stack})
    end,
    run(Rest, Event, M, Meta).

%% @doc Run `Fun' as a span: emit `Prefix ++ [start]' (measurements `system_time',
%% `monotonic_time'), then `Prefix ++ [stop]' with its `duration' (native time units) when
%% `Fun' returns `{Result, StopMetadata}', or `Prefix ++ [exception]' (metadata `kind',
%% `reason', `stacktrace') if it raises, which is then re-raised. Returns Result. The stop
%% and exception metadata are Metadata merged with StopMetadata; all three carry the same
%% `telemetry_span_context' reference.
-spec span([atom(), ...], metadata(), fun(() -> {Result, metadata()})) -> Result.
span([_ | _] = Prefix, Metadata, Fun) when is_map(Metadata), is_function(Fun, 0) ->
    Meta = Metadata#{telemetry_span_context => make_ref()},
    T0 = erlang:monotonic_time(),
    execute(Prefix ++ [start], #{system_time => erlang:system_time(), monotonic_time => T0},
            Meta),
    try Fun() of
        {Result, StopMeta} when is_map(StopMeta) ->
            T1 = erlang:monotonic_time(),
            execute(Prefix ++ [stop], #{duration => T1 - T0, monotonic_time => T1},
                    maps:merge(Meta, StopMeta)),
            Result
    catch Class:Reason:Stack ->
        T2 = erlang:monotonic_time(),
        execute(Prefix ++ [exception], #{duration => T2 - T0, monotonic_time => T2},
                Meta#{kind => Class, reason => Reason, stacktrace => Stack}),
        erlang:raise(Class, Reason, Stack)
    end;
span(Prefix, Metadata, Fun) ->
    erlang:error(badarg, [Prefix, Metadata, Fun]).

%% @doc Attach handler `Id' to one event: `Fun(Event, Measurements, Metadata, Config)' runs
%% in the emitting process for each such event. `{error, already_exists}' if `Id' is taken.
-spec attach(handler_id(), event_name(), handler(), term()) ->
          ok | {error, already_exists | {bad_event, term()} | {bad_handler, term()}}.
attach(Id, Event, Fun, Config) -> attach_many(Id, [Event], Fun, Config).

%% @doc attach/4 for several events at once.
-spec attach_many(handler_id(), [event_name()], handler(), term()) ->
          ok | {error, already_exists | {bad_event, term()} | {bad_handler, term()}}.
attach_many(_Id, _Events, Fun, _Config) when not is_function(Fun, 4) ->
    {error, {bad_handler, Fun}};
attach_many(Id, Events, Fun, Config) ->
    case [E || E <- listify(Events), not event_name(E)] of
        [] when Events =/= [] ->
            locked(fun() ->
                           Ids = persistent_term:get(?IDS_KEY, #{}),
                           case maps:is_key(Id, Ids) of
                               true -> {error, already_exists};
                               false ->
                                   [put_handlers(E, handlers(E) ++ [{Id, Fun, Config}])
                                    || E <- lists:usort(Events)],
                                   persistent_term:put(?IDS_KEY,
                                                       Ids#{Id => {lists:usort(Events), Config}}),
                                   set_call_flag()
                           end
                   end);
        [] -> {error, {bad_event, Events}};
        [Bad | _] -> {error, {bad_event, Bad}}
    end.

%% @doc Detach handler `Id' from every event it was attached to.
-spec detach(handler_id()) -> ok | {error, not_found}.
detach(Id) ->
    locked(fun() ->
                   Ids = persistent_term:get(?IDS_KEY, #{}),
                   case maps:take(Id, Ids) of
                       error -> {error, not_found};
                       {{Events, _}, Rest} ->
                           [put_handlers(E, [H || {I, _, _} = H <- handlers(E), I =/= Id])
                            || E <- Events],
                           persistent_term:put(?IDS_KEY, Rest),
                           set_call_flag()
                   end
           end).

%% @doc The handlers attached here to events that start with `Prefix' (`[]' for all):
%% `#{id, event_name, function, config}' maps, as telemetry:list_handlers/1 gives.
-spec list_handlers([atom()]) -> [#{id := handler_id(), event_name := event_name(),
                                    function := handler(), config := term()}].
list_handlers(Prefix) when is_list(Prefix) ->
    [#{id => Id, event_name => E, function => F, config => C}
     || {?EVENT_KEY(E), Hs} <- persistent_term:get(), lists:prefix(Prefix, E),
        {Id, F, C} <- Hs].

%% @doc Whether anybody listens to the `[shoal, call | _]' events: a handler attached here,
%% or one attached to telemetry as of the last probe/0. One `persistent_term' read, so that
%% `shoal:call' builds no span when nobody does.
-spec call_events() -> boolean().
call_events() -> persistent_term:get(?CALL_FLAG, false).

%% @doc Look again whether anybody listens to the `[shoal, call | _]' events (telemetry may
%% have been loaded, or handlers attached to it, since the last look) and update the flag
%% call_events/0 reads. Writes the flag only when it changes; `ok'.
-spec probe() -> ok.
probe() ->
    case call_listeners() =:= call_events() of
        true -> ok;
        false -> locked(fun set_call_flag/0)
    end.

%% @doc Whether anybody listens to any of Events right now: a handler attached here, or
%% (telemetry loaded) one attached to telemetry. For emitters of many events in a row (a
%% batch of moves) that build nothing when nobody listens: ask once per batch.
-spec listening([event_name()]) -> boolean().
listening(Events) ->
    lists:any(fun(E) -> handlers(E) =/= [] end, Events) orelse
        (erlang:function_exported(?TELEMETRY, list_handlers, 1) andalso
         lists:any(fun(E) ->
                           try (?TELEMETRY):list_handlers(E) of
                               [] -> false;
                               _ -> true
                           catch _:_ -> true
                           end
                   end, Events)).

%%% Internals ------------------------------------------------------------------------------

%% Under the lock: the flag as the handlers are now.
set_call_flag() ->
    On = call_listeners(),
    On =:= call_events() orelse persistent_term:put(?CALL_FLAG, On),
    ok.

call_listeners() ->
    lists:any(fun({Events, _Config}) -> lists:any(fun call_event/1, Events) end,
              maps:values(persistent_term:get(?IDS_KEY, #{})))
        orelse telemetry_call_handlers().

call_event([shoal, call | _]) -> true;
call_event(_) -> false.

%% telemetry's own handlers for the call events, when it is loaded (any telemetry that
%% answers something else than a list counts as listening).
telemetry_call_handlers() ->
    erlang:function_exported(?TELEMETRY, list_handlers, 1) andalso
        try (?TELEMETRY):list_handlers([shoal, call]) of
            [] -> false;
            _ -> true
        catch _:_ -> true
        end.

handlers(E) -> persistent_term:get(?EVENT_KEY(E), []).

put_handlers(E, []) -> _ = persistent_term:erase(?EVENT_KEY(E)), ok;
put_handlers(E, Hs) -> persistent_term:put(?EVENT_KEY(E), Hs).

event_name([_ | _] = E) -> lists:all(fun erlang:is_atom/1, E);
event_name(_) -> false.

listify(L) when is_list(L) -> L;
listify(X) -> [X].

%% Attach and detach read, change and write two terms: one writer at a time, node-wide. The
%% lock is a registered name, held by a short-lived process that runs Fun (so the caller may
%% have a registered name of its own, and a holder that dies frees the lock); waiters
%% monitor the holder instead of polling.
locked(Fun) ->
    {Caller, Tag} = {self(), make_ref()},
    {Pid, Ref} = spawn_monitor(fun() -> Caller ! {Tag, with_lock(Fun)} end),
    receive
        {Tag, Result} -> erlang:demonitor(Ref, [flush]), Result;
        {'DOWN', Ref, process, Pid, Reason} -> erlang:error({?MODULE, Reason})
    end.

with_lock(Fun) ->
    try register(?LOCK, self()) of
        true -> Fun()
    catch error:badarg ->
        case whereis(?LOCK) of
            undefined -> with_lock(Fun);
            Holder ->
                Ref = erlang:monitor(process, Holder),
                receive {'DOWN', Ref, process, Holder, _} -> with_lock(Fun) end
        end
    end.
