%% @doc PropEr model of the NIF table: random sequences of claim, register, unregister,
%% release_claim, put_remote, delete_remote, whereis, lookup and count, checked against a
%% map. Three long-lived actor processes claim and act as workers; two fake remote pids
%% stand for workers on another node.
-module(shoal_prop_tests).
-behaviour(proper_statem).

-include_lib("eunit/include/eunit.hrl").

-export([initial_state/0, command/1, precondition/2, next_state/3, postcondition/3]).
-export([claim/2, register/2, unregister/2, release_claim/2, put_remote/3, delete_remote/2,
         whereis/1, lookup/1, count/0, entries/0]).

-import(proper_types, [oneof/1, elements/1, range/2]).

-define(KEYS, [a, b, {c, 1}, <<"d">>, 42, [e]]).
-define(NODE, 'remote@host').

table_model_test_() ->
    {timeout, 60,
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
    put(table, shoal_nif:new(2)),
    put(actors, list_to_tuple([spawn(fun actor/0) || _ <- lists:seq(1, 3)])).

teardown() ->
    [exit(P, kill) || P <- tuple_to_list(get(actors))],
    ok = shoal_nif:delete(get(table)).

actor() ->
    receive {From, Fun} -> From ! {self(), Fun()}, actor() end.

as(A, Fun) ->
    P = element(A, get(actors)),
    P ! {self(), Fun},
    receive {P, R} -> R end.

pid(A) -> element(A, get(actors)).

rpid(I) ->
    N = atom_to_binary(?NODE, utf8),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, I:32, 0:32, 1:32>>).

%%% Commands (run against the real table) --------------------------------------------------

claim(A, K) -> T = get(table), as(A, fun() -> shoal_nif:claim(T, K, nowait) end).
register(K, W) -> shoal_nif:register(get(table), K, pid(W)).
unregister(K, A) -> shoal_nif:unregister(get(table), K, pid(A)).
release_claim(A, K) -> T = get(table), as(A, fun() -> shoal_nif:release_claim(T, K) end).
put_remote(K, R, Inc) ->
    case shoal_nif:put_remote(get(table), K, ?NODE, rpid(R), Inc) of
        ok -> ok;
        new -> ok;
        replaced -> ok;
        Other -> Other
    end.
delete_remote(K, R) -> shoal_nif:delete_remote(get(table), K, rpid(R)).
whereis(K) -> shoal_nif:whereis(get(table), K).
lookup(K) -> shoal_nif:lookup(get(table), K).
count() -> shoal_nif:count(get(table)).
entries() -> maps:get(entries, shoal_nif:info(get(table))).

%%% Model -----------------------------------------------------------------------------------
%% Key => {claimed, Actor} | {active, Actor} | {remote, R}

initial_state() -> #{}.

command(_S) ->
    K = elements(?KEYS),
    A = range(1, 3),
    R = range(1, 2),
    oneof([{call, ?MODULE, claim, [A, K]},
           {call, ?MODULE, register, [K, A]},
           {call, ?MODULE, unregister, [K, A]},
           {call, ?MODULE, release_claim, [A, K]},
           {call, ?MODULE, put_remote, [K, R, range(1, 1000)]},
           {call, ?MODULE, delete_remote, [K, R]},
           {call, ?MODULE, whereis, [K]},
           {call, ?MODULE, lookup, [K]},
           {call, ?MODULE, count, []},
           {call, ?MODULE, entries, []}]).

%% put_remote over a claim or a local worker is being redefined for migration (cluster
%% work in progress); the model only stores replicas on free or replicated keys.
precondition(S, {call, _, put_remote, [K | _]}) ->
    case maps:get(K, S, none) of
        none -> true;
        {remote, _} -> true;
        _ -> false
    end;
precondition(_, _) -> true.

next_state(S, _V, {call, _, claim, [A, K]}) ->
    case maps:get(K, S, none) of
        none -> S#{K => {claimed, A}};
        _ -> S
    end;
next_state(S, _V, {call, _, register, [K, W]}) ->
    case maps:get(K, S, none) of
        none -> S#{K => {active, W}};
        {claimed, _} -> S#{K => {active, W}};
        _ -> S
    end;
next_state(S, _V, {call, _, unregister, [K, A]}) ->
    case maps:get(K, S, none) of
        {claimed, A} -> maps:remove(K, S);
        {active, A} -> maps:remove(K, S);
        _ -> S
    end;
next_state(S, _V, {call, _, release_claim, [A, K]}) ->
    case maps:get(K, S, none) of
        {claimed, A} -> maps:remove(K, S);
        _ -> S
    end;
next_state(S, _V, {call, _, put_remote, [K, R, _]}) -> S#{K => {remote, R}};
next_state(S, _V, {call, _, delete_remote, [K, R]}) ->
    case maps:get(K, S, none) of
        {remote, R} -> maps:remove(K, S);
        _ -> S
    end;
next_state(S, _V, _) -> S.

postcondition(S, {call, _, claim, [A, K]}, Res) ->
    case maps:get(K, S, none) of
        none -> Res =:= claimed;
        {claimed, A} -> Res =:= claimed;
        {claimed, B} -> Res =:= {wait, pid(B)};
        {active, W} -> Res =:= {ok, pid(W)};
        {remote, R} -> Res =:= {ok, rpid(R)}
    end;
postcondition(S, {call, _, register, [K, W]}, Res) ->
    case maps:get(K, S, none) of
        none -> match(Res, {ok, '_'});
        {claimed, _} -> match(Res, {ok, '_'});
        {active, W} -> Res =:= {ok, 0};
        {active, O} -> Res =:= {error, {already_registered, pid(O)}};
        {remote, R} -> Res =:= {error, {already_registered, rpid(R)}}
    end;
postcondition(S, {call, _, unregister, [K, A]}, Res) ->
    case maps:get(K, S, none) of
        {claimed, A} -> Res =:= ok;
        {active, A} -> Res =:= ok;
        _ -> Res =:= not_found
    end;
postcondition(S, {call, _, release_claim, [A, K]}, Res) ->
    Res =:= case maps:get(K, S, none) of {claimed, A} -> ok; _ -> not_found end;
postcondition(_S, {call, _, put_remote, _}, Res) -> Res =:= ok;
postcondition(S, {call, _, delete_remote, [K, R]}, Res) ->
    Res =:= case maps:get(K, S, none) of {remote, R} -> ok; _ -> not_found end;
postcondition(S, {call, _, whereis, [K]}, Res) ->
    Res =:= case maps:get(K, S, none) of
                {active, W} -> pid(W);
                {remote, R} -> rpid(R);
                _ -> undefined
            end;
postcondition(S, {call, _, lookup, [K]}, Res) ->
    case maps:get(K, S, none) of
        none -> Res =:= undefined;
        {claimed, A} -> Res =:= {claimed, pid(A)};
        {active, W} -> match(Res, {active, pid(W), '_'});
        {remote, R} -> match(Res, {active, rpid(R), '_'})
    end;
postcondition(S, {call, _, count, []}, Res) ->
    Res =:= length([x || {St, _} <- maps:values(S), St =/= claimed]);
postcondition(S, {call, _, entries, []}, Res) ->
    Res =:= map_size(S).

match({A, B}, {A, '_'}) when is_integer(B) -> true;
match({A, B, C}, {A, B, '_'}) when is_integer(C) -> true;
match(_, _) -> false.
