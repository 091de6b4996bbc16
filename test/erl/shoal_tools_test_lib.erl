%% @doc Helpers shared by the pool tools' suites: bounded waits, never a bare sleep where
%% a condition or a message can be waited for.
-module(shoal_tools_test_lib).
-export([wait_until/1, recv/1, recv/2, none/1, kill/1]).

-define(WAIT, 5000).

%% @doc Poll F (every 2 ms) until it returns true; fail the case after 5 s.
wait_until(F) -> wait_until(F, erlang:monotonic_time(millisecond) + ?WAIT).
wait_until(F, Deadline) ->
    case F() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail(condition_never_held);
                false -> receive after 2 -> wait_until(F, Deadline) end
            end
    end.

%% @doc The first message that is a tuple tagged Tag; fail the case after 5 s (or T ms).
recv(Tag) -> recv(Tag, ?WAIT).
recv(Tag, T) ->
    receive Msg when is_tuple(Msg), element(1, Msg) =:= Tag -> Msg
    after T -> ct:fail({nothing_received, Tag})
    end.

%% @doc Fail the case if a tuple tagged Tag comes within 100 ms.
none(Tag) ->
    receive Msg when is_tuple(Msg), element(1, Msg) =:= Tag -> ct:fail({unexpected, Msg})
    after 100 -> ok
    end.

%% @doc Kill Pid and return once it is dead.
kill(Pid) ->
    Ref = erlang:monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Ref, process, Pid, _} -> ok end.
