%% @doc A pool's health across its members: each member's own figures (asked with the
%% protocol's `health' request, answered by every member that is up within 5 s), with the
%% window and drain flag this node knows for it.
-module(shoal_health).

-include("shoal_int.hrl").

-export([health/1]).

-define(TIMEOUT, 5000).

%% @doc Per member: workers, window, fill (count / target), drained, crashes per minute,
%% whether it answered; and the cluster total.
-spec health(#shoal_cfg{}) -> #{nodes := #{node() => map()}, total := non_neg_integer()}.
health(#shoal_cfg{pool = Pool} = Cfg) ->
    Ms = shoal_view:members(Cfg),
    Asked = [{N, ask(Cfg, Pool, N)} || N <- Ms],
    Deadline = erlang:monotonic_time(millisecond) + ?TIMEOUT,
    PerNode = maps:from_list([{N, node_health(Cfg, N, collect(Pool, A, Deadline))}
                              || {N, A} <- Asked]),
    #{nodes => PerNode,
      total => lists:sum([C || #{count := C} <- maps:values(PerNode), is_integer(C)])}.

ask(Cfg, Pool, Node) ->
    case shoal_view:peer(Cfg, Node) of
        undefined -> none;
        Member ->
            Ref = shoal_proto:request_ref(),
            shoal_proto:send(Member, Pool, {health, {self(), Ref}}),
            Ref
    end.

collect(_Pool, none, _Deadline) -> none;
collect(Pool, Ref, Deadline) ->
    Wait = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {'$shoal', _, Pool, {done, Ref, Figures}} -> {ok, Figures}
    after Wait ->
            shoal_proto:drop_ref(Ref),
            none
    end.

node_health(Cfg, N, R) ->
    W = shoal_view:window(Cfg, N),
    {Count, Cpm, Up} = case R of
                           {ok, #{count := C, crashes_per_minute := Cp}} -> {C, Cp, true};
                           _ -> {shoal_registry:count(Cfg, N), undefined, false}
                       end,
    #{count => Count, window => W,
      fill => case W of
                  #{target := infinity} -> undefined;
                  #{target := 0} -> undefined;
                  #{target := Tg} -> Count / Tg
              end,
      drained => shoal_view:drained(Cfg, N),
      crashes_per_minute => Cpm,
      reachable => Up}.
