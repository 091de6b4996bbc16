%% @doc PropEr state-machine model of the NIF table (shoal_nif), checked against the real
%% NIF: random sequences of claims, registrations (claim and over modes), unregistrations,
%% moving flags, replicas and tombs with versions, ties and marks, worker deaths, reads,
%% counts and every walk. The model is a second, plain-Erlang statement of the rules in
%% shoal_nif's module doc (and docs/protocol.md): entries are
%%   {claimed, Who, Floor}            Floor = none | {Vsn, Node}: the tomb it replaced
%%   {local, Who, Vsn, Moving}
%%   {remote, Node, R, Vsn, Mark}
%%   {tomb, Vsn, Node}
%% where Who = {Actor, Incarnation} names a process (three actors, restarted when killed)
%% and R numbers a fabricated pid of Node. Versions of replicas and tombs are drawn near
%% the version the key holds when the command runs (so they tie with local versions, win
%% and lose), and the model checks that every version the table hands out is above every
%% version it was given.
%%
%% The model's state is only meaningful while the commands run (next_state sees the real
%% results then); during generation every precondition is true, so the generated state is
%% not consulted.
-module(shoal_prop_tests).
-behaviour(proper_statem).

-include_lib("eunit/include/eunit.hrl").

-export([initial_state/0, command/1, precondition/2, next_state/3, postcondition/3]).
-export([claim/2, release_claim/2, register_claim/3, register_over/4, unregister/2,
         set_moving/3, put_remote/5, put_successor/4, remove_remote/4, kill/1, whereis/1, lookup/1,
         counts/0, fold/2]).

-import(proper_types, [oneof/1, elements/1, range/2, boolean/0]).

-define(KEYS, [a, {b, 1}, <<"c">>, 42]).
-define(NODES, ['a@h', 'z@h']). %% around nonode@nohost: ties go both ways
-define(BASE, 1000).            %% the version near which an absent key's versions fall

table_model_test_() ->
    {timeout, 120,
     fun() ->
             Prop = proper:forall(
                      proper_statem:commands(?MODULE),
                      fun(Cmds) ->
                              setup(),
                              {H, S, Res} = proper_statem:run_commands(?MODULE, Cmds),
                              teardown(),
                              Res =:= ok orelse
                                  io:format(user, "~nfailed: ~p~nstate ~p~nlast ~p~n",
                                            [Res, S, lists:last([x | H])]),
                              Res =:= ok
                      end),
             ?assert(proper:quickcheck(Prop, [{numtests, 300}, {to_file, user}]))
     end}.

%%% Setup: a table and three actors per run --------------------------------------------

setup() ->
    put(table, shoal_nif:new(1)),
    [put({actor, A, 0}, spawn(fun actor/0)) || A <- [1, 2, 3]],
    [put({inc, A}, 0) || A <- [1, 2, 3]],
    ok.

teardown() ->
    [exit(P, kill) || {{actor, _, _}, P} <- get()],
    [erase(K) || {{actor, _, _} = K, _} <- get()],
    ok = shoal_nif:delete(get(table)).

actor() ->
    receive {From, Fun} -> From ! {self(), Fun()}, actor() end.

cur(A) -> get({actor, A, get({inc, A})}).

as(A, Fun) ->
    P = cur(A),
    P ! {self(), Fun},
    receive {P, R} -> R end.

pid({A, I}) -> get({actor, A, I}).

rpid(Node, R) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, R:32, 0:32, 1:32>>).

%% The version Key holds now (what relative versions are drawn near).
base(K) ->
    case shoal_nif:lookup(get(table), K) of
        {local, _, V, _} -> V;
        {remote, _, _, V} -> V;
        {tomb, V} -> V;
        _ -> ?BASE
    end.

%%% Commands (run against the real table) --------------------------------------------------

claim(A, K) -> T = get(table), as(A, fun() -> shoal_nif:claim(T, K, nowait) end).
release_claim(A, K) -> T = get(table), as(A, fun() -> shoal_nif:release_claim(T, K, retry) end).
register_claim(A, K, W) ->
    T = get(table),
    P = cur(W),
    as(A, fun() -> shoal_nif:register(T, K, P, claim) end).
register_over(K, W, Delta, Owner) ->
    Max = max(0, base(K) + Delta),
    {shoal_nif:register(get(table), K, cur(W), {over, Max, Owner}), Max}.
unregister(K, A) -> shoal_nif:unregister(get(table), K, cur(A)).
set_moving(K, A, On) -> shoal_nif:set_moving(get(table), K, cur(A), On).
put_remote(K, N, R, Delta, Mark) ->
    V = base(K) + Delta,
    {shoal_nif:put_remote(get(table), K, N, rpid(N, R), V, Mark), V}.
put_successor(K, N, R, Delta) ->
    V = base(K) + Delta,
    {shoal_nif:put_successor(get(table), K, N, rpid(N, R), V, 0), V}.
remove_remote(K, N, _R, Delta) ->
    V = base(K) + Delta,
    {shoal_nif:remove_remote(get(table), K, N, V), V}.
%% Kill actor A's process and wait for the table to notice; a new process takes its place.
kill(A) ->
    P = cur(A),
    Ref = erlang:monitor(process, P),
    exit(P, kill),
    receive {'DOWN', Ref, _, _, _} -> ok end,
    T = get(table),
    Gone = fun() -> [] =:= [K || K <- ?KEYS, shoal_nif:whereis(T, K) =:= P] end,
    wait(Gone, 500),
    I = get({inc, A}) + 1,
    put({inc, A}, I),
    put({actor, A, I}, spawn(fun actor/0)),
    ok.
whereis(K) -> shoal_nif:whereis(get(table), K).
lookup(K) -> shoal_nif:lookup(get(table), K).
counts() ->
    T = get(table),
    {shoal_nif:count(T), shoal_nif:count(T, local), [shoal_nif:count(T, N) || N <- ?NODES],
     maps:with([entries, workers, local_workers, remote_workers, claims, tombs, nodes],
               shoal_nif:info(T))}.
fold(Op, Arg) ->
    case shoal_nif:fold(get(table), Op, Arg) of
        L when is_list(L) -> lists:sort(L);
        N -> N
    end.

wait(F, 0) -> F();
wait(F, N) -> F() orelse (receive after 2 -> wait(F, N - 1) end).

%%% Generators -----------------------------------------------------------------------------

initial_state() -> #{entries => #{}, seen => 0, inc => #{1 => 0, 2 => 0, 3 => 0}}.

command(_S) ->
    K = elements(?KEYS),
    A = range(1, 3),
    N = elements(?NODES),
    D = range(-2, 2),
    oneof([{call, ?MODULE, claim, [A, K]},
           {call, ?MODULE, release_claim, [A, K]},
           {call, ?MODULE, register_claim, [A, K, range(1, 3)]},
           {call, ?MODULE, register_over, [K, A, range(-1, 1), elements([none | ?NODES])]},
           {call, ?MODULE, unregister, [K, A]},
           {call, ?MODULE, set_moving, [K, A, boolean()]},
           {call, ?MODULE, put_remote, [K, N, range(1, 2), D, range(0, 2)]},
           {call, ?MODULE, put_successor, [K, N, range(1, 2), D]},
           {call, ?MODULE, remove_remote, [K, N, range(1, 2), D]},
           {call, ?MODULE, kill, [A]},
           {call, ?MODULE, whereis, [K]},
           {call, ?MODULE, lookup, [K]},
           {call, ?MODULE, counts, []},
           {call, ?MODULE, fold, [elements([owned, dump]), x]},
           {call, ?MODULE, fold, [keys_on, elements([local | ?NODES])]},
           {call, ?MODULE, fold, [purge_node, N]},
           {call, ?MODULE, fold, [sweep_node, {N, range(0, 2), elements([?BASE, ?BASE + 2, 1 bsl 62])}]},
           {call, ?MODULE, fold, [sweep_tombs, 0]}]).

precondition(_, _) -> true.

%%% The model ------------------------------------------------------------------------------

newer(A, B) -> A > B. %% {Vsn, Node} pairs: Erlang's term order is the rule

who(S, A) -> {A, maps:get(A, maps:get(inc, S))}.

get_e(S, K) -> maps:get(K, maps:get(entries, S), none).
put_e(S, K, none) -> S#{entries := maps:remove(K, maps:get(entries, S))};
put_e(S, K, E) -> S#{entries := maps:put(K, E, maps:get(entries, S))}.

seen(S, V) -> S#{seen := max(V, maps:get(seen, S))}.

symbolic({var, _}) -> true;
symbolic({call, _, _, _}) -> true;
symbolic(_) -> false.

%% Only the results of a real run are applied (see the module doc).
next_state(S, V, Call) ->
    case symbolic(V) of
        true -> S;
        false -> apply_op(S, V, Call)
    end.

apply_op(S, _, {call, _, claim, [A, K]}) ->
    Who = who(S, A),
    case get_e(S, K) of
        none -> put_e(S, K, {claimed, Who, none});
        {tomb, V, N} -> put_e(S, K, {claimed, Who, {V, N}});
        _ -> S
    end;
apply_op(S, _, {call, _, release_claim, [A, K]}) -> end_claim(S, K, who(S, A));
apply_op(S, Res, {call, _, register_claim, [_A, K, W]}) ->
    case Res of
        {ok, V} -> seen(put_e(S, K, {local, who(S, W), V, false}), V);
        _ -> S
    end;
apply_op(S0, {Res, Max}, {call, _, register_over, [K, W, _, _]}) ->
    S = seen(S0, Max),
    case Res of
        {ok, V} -> seen(put_e(S, K, {local, who(S, W), V, false}), V);
        _ -> S
    end;
apply_op(S, _, {call, _, unregister, [K, A]}) ->
    Who = who(S, A),
    case get_e(S, K) of
        {local, Who, _, _} -> put_e(S, K, none);
        {claimed, Who, _} -> end_claim(S, K, Who);
        _ -> S
    end;
apply_op(S, _, {call, _, set_moving, [K, A, On]}) ->
    Who = who(S, A),
    case get_e(S, K) of
        {local, Who, V, _} -> put_e(S, K, {local, Who, V, On});
        _ -> S
    end;
apply_op(S, Res, {call, _, put_successor, [K, N, R, _]}) ->
    apply_op(S, Res, {call, ?MODULE, put_remote, [K, N, R, 0, 0]});
apply_op(S0, {Res, V}, {call, _, put_remote, [K, N, R, _, Mark]}) ->
    S = seen(S0, V),
    case {Res, get_e(S, K)} of
        {stored, _} -> put_e(S, K, {remote, N, R, V, Mark});
        {stale, {remote, N, R2, V, _}} when Mark =/= 0 -> put_e(S, K, {remote, N, R2, V, Mark});
        _ -> S
    end;
apply_op(S0, {Res, V}, {call, _, remove_remote, [K, N, _, _]}) ->
    S = seen(S0, V),
    case {Res, get_e(S, K)} of
        {stale, {claimed, Who, F}} ->
            case F =:= none orelse newer({V, N}, F) of
                true -> put_e(S, K, {claimed, Who, {V, N}});
                false -> S
            end;
        {stale, _} -> S;
        {_, _} -> put_e(S, K, {tomb, V, N})
    end;
apply_op(S, _, {call, _, kill, [A]}) ->
    Who = who(S, A),
    Left = maps:filter(fun(_, {local, W, _, _}) -> W =/= Who; (_, _) -> true end,
                       maps:get(entries, S)),
    Inc = maps:get(inc, S),
    S#{entries := Left, inc := Inc#{A := maps:get(A, Inc) + 1}};
apply_op(S, _, {call, _, fold, [purge_node, N]}) ->
    S#{entries := maps:filter(fun(_, E) -> not is_remote_of(E, N) end, maps:get(entries, S))};
apply_op(S, _, {call, _, fold, [sweep_node, {N, Mark, Before}]}) ->
    Keep = fun(_, {remote, N1, _, V, M}) -> not (N1 =:= N andalso M =/= Mark andalso V < Before);
              (_, _) -> true
           end,
    S#{entries := maps:filter(Keep, maps:get(entries, S))};
apply_op(S, _, {call, _, fold, [sweep_tombs, 0]}) ->
    S#{entries := maps:filter(fun(_, E) -> element(1, E) =/= tomb end, maps:get(entries, S))};
apply_op(S, _, _) -> S.

end_claim(S, K, Who) ->
    case get_e(S, K) of
        {claimed, Who, none} -> put_e(S, K, none);
        {claimed, Who, {V, N}} -> put_e(S, K, {tomb, V, N});
        _ -> S
    end.

is_remote_of({remote, N, _, _, _}, N) -> true;
is_remote_of(_, _) -> false.

%% What the table must answer, given the model before the command.
postcondition(S, {call, _, claim, [A, K]}, Res) ->
    Who = who(S, A),
    Res =:= case get_e(S, K) of
                none -> claimed;
                {tomb, _, _} -> claimed;
                {claimed, Who, _} -> claimed;
                {claimed, Other, _} -> {wait, pid(Other)};
                E -> {ok, worker(E)}
            end;
postcondition(S, {call, _, release_claim, [A, K]}, Res) ->
    Who = who(S, A),
    Res =:= case get_e(S, K) of {claimed, Who, _} -> ok; _ -> not_found end;
postcondition(S, {call, _, register_claim, [A, K, _]}, Res) ->
    Who = who(S, A),
    case get_e(S, K) of
        {claimed, Who, F} -> fresh(S, Res, floor_vsn(F));
        {claimed, Other, _} -> Res =:= {error, {claimed, pid(Other)}};
        none -> Res =:= {error, not_claimed};
        {tomb, _, _} -> Res =:= {error, not_claimed};
        E -> Res =:= {error, {already_registered, worker(E)}}
    end;
postcondition(S, {call, _, register_over, [K, W, _, Owner]}, {Res, Max}) ->
    Me = who(S, W),
    case get_e(S, K) of
        none -> fresh(S, Res, Max);
        {tomb, V, _} -> fresh(S, Res, max(V, Max));
        {remote, N, _, V, _} when V =< Max; N =:= Owner -> fresh(S, Res, max(V, Max));
        {remote, N, R, V, _} -> Res =:= {error, {newer, N, rpid(N, R), V}};
        {claimed, Other, _} -> Res =:= {error, {claimed, pid(Other)}};
        {local, Me, _, _} -> fresh(S, Res, Max);  %% a take-back: a fresh version
        {local, Other, _, _} -> Res =:= {error, {already_registered, pid(Other)}}
    end;
postcondition(S, {call, _, unregister, [K, A]}, Res) ->
    Who = who(S, A),
    Res =:= case get_e(S, K) of
                {local, Who, _, _} -> ok;
                {claimed, Who, _} -> ok;
                _ -> not_found
            end;
postcondition(S, {call, _, set_moving, [K, A, _]}, Res) ->
    Who = who(S, A),
    Res =:= case get_e(S, K) of {local, Who, V, _} -> {ok, V}; _ -> not_found end;
postcondition(S, {call, _, put_remote, [K, N, _, _, _]}, {Res, V}) ->
    replica_post(S, K, N, Res, V, false);
postcondition(S, {call, _, put_successor, [K, N, _, _]}, {Res, V}) ->
    replica_post(S, K, N, Res, V, true);
postcondition(S, {call, _, remove_remote, [K, N, _, _]}, {Res, V}) ->
    X = {V, N},
    Res =:= case get_e(S, K) of
                none -> tombstoned;
                {remote, RN, _, RV, _} -> case newer({RV, RN}, X) of
                                              true -> stale;
                                              false -> removed
                                          end;
                {tomb, TV, TN} -> case newer(X, {TV, TN}) of
                                      true -> tombstoned;
                                      false -> stale
                                  end;
                _ -> stale
            end;
postcondition(_S, {call, _, kill, _}, Res) -> Res =:= ok;
postcondition(S, {call, _, whereis, [K]}, Res) ->
    Res =:= case get_e(S, K) of
                {local, _, _, _} = E -> worker(E);
                {remote, _, _, _, _} = E -> worker(E);
                _ -> undefined
            end;
postcondition(S, {call, _, lookup, [K]}, Res) ->
    Res =:= case get_e(S, K) of
                none -> undefined;
                {claimed, Who, _} -> {claimed, pid(Who)};
                {local, W, V, M} -> {local, pid(W), V, M};
                {remote, N, R, V, _} -> {remote, N, rpid(N, R), V};
                {tomb, V, _} -> {tomb, V}
            end;
postcondition(S, {call, _, counts, []}, {Count, Local, PerNode, Info}) ->
    Es = maps:values(maps:get(entries, S)),
    L = length([x || {local, _, _, _} <- Es]),
    R = length([x || {remote, _, _, _, _} <- Es]),
    Nodes = lists:usort([N || {remote, N, _, _, _} <- Es] ++ [N || {tomb, _, N} <- Es] ++
                        [N || {claimed, _, {_, N}} <- Es]),
    {Count, Local, PerNode, Info} =:=
        {L + R, L, [length([x || {remote, N, _, _, _} <- Es, N =:= Node]) || Node <- ?NODES],
         #{entries => length(Es), workers => L + R, local_workers => L, remote_workers => R,
           claims => length([x || {claimed, _, _} <- Es]),
           tombs => length([x || {tomb, _, _} <- Es]), nodes => length(Nodes)}};
postcondition(S, {call, _, fold, [Op, Arg]}, Res) ->
    Es = maps:to_list(maps:get(entries, S)),
    Res =:= case Op of
                owned -> lists:sort([{K, pid(W), V} || {K, {local, W, V, _}} <- Es]);
                dump -> lists:sort([{K, node(), pid(W), V} || {K, {local, W, V, _}} <- Es] ++
                                   [{K, N, rpid(N, R), V} || {K, {remote, N, R, V, _}} <- Es]);
                keys_on when Arg =:= local -> lists:sort([K || {K, {local, _, _, _}} <- Es]);
                keys_on -> lists:sort([K || {K, E} <- Es, is_remote_of(E, Arg)]);
                purge_node -> length([K || {K, E} <- Es, is_remote_of(E, Arg)]);
                sweep_node ->
                    {N, Mark, Before} = Arg,
                    length([K || {K, {remote, N1, _, V, M}} <- Es,
                                 N1 =:= N, M =/= Mark, V < Before]);
                sweep_tombs -> length([K || {K, {tomb, _, _}} <- Es])
            end.

stored_if(true) -> stored;
stored_if(false) -> stale.

worker({local, W, _, _}) -> pid(W);
worker({remote, N, R, _, _}) -> rpid(N, R).

floor_vsn(none) -> 0;
floor_vsn({V, _}) -> V.

%% A registration's version: above every version the table was given or handed out, and
%% above Min (what it replaces).
fresh(S, {ok, V}, Min) when is_integer(V) -> V > maps:get(seen, S) andalso V > Min;
fresh(_, _, _) -> false.

%% What put_remote/6 (Successor false) or put_successor/6 (true) answers for {V, N}.
replica_post(S, K, N, Res, V, Successor) ->
    X = {V, N},
    Res =:= case get_e(S, K) of
                none -> stored;
                {tomb, TV, TN} -> stored_if(newer(X, {TV, TN}));
                {claimed, _, F} -> stored_if(F =:= none orelse newer(X, F));
                {remote, RN, _, RV, _} -> stored_if(newer(X, {RV, RN}));
                {local, W, LV, Moving} ->
                    %% a moving worker is replaced by its move's outcome only
                    case {newer(X, {LV, node()}), Moving, Successor} of
                        {false, _, _} -> stale;
                        {true, true, true} -> stored;
                        {true, true, false} -> stale;
                        {true, false, _} -> {conflict, pid(W), LV}
                    end
            end.
