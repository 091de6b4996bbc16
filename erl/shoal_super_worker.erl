%% @doc Starting group members and standalone workers from their spec, and the context a
%% running member finds itself in (for shoal_super's "from inside a worker" calls).
%%
%% A spec is `{gen_server, Module, Args}' (started with gen_server:start_link/3), `{M, F,
%% A}' or a zero-arity fun (the body of a process started with proc_lib, so it gets crash
%% reports and `$ancestors' like any OTP process). The start functions run in the
%% supervisor that owns the worker, which is where the registry entry is written.
-module(shoal_super_worker).

-include("shoal_super.hrl").

-export([start_member/4, start_solo/3, start_body/2, run/2, context/0]).

-export_type([context/0]).

-type context() :: #{sup := atom(), owner := node(), group := term(), id := term()}.

-define(CTX, '$shoal_super').

%% @private In group G's supervisor: start member W and register it.
-spec start_member(#ss{}, term(), term(), shoal_super_opts:worker_spec()) ->
          {ok, pid()} | {error, term()} | ignore.
start_member(#ss{id = Id, tab = Tab}, G, W, Spec) ->
    Ctx = #{sup => Id, owner => node(), group => G, id => W},
    case start_body(Spec, Ctx) of
        {ok, Pid} ->
            case shoal_super_reg:member(Tab, G, W) of
                {ok, _, Old} -> ets:delete(Tab, {mpid, Old});
                error -> ok
            end,
            ok = shoal_super_reg:put_mpid(Tab, Pid, G, W),
            ok = shoal_super_reg:put_member(Tab, G, W, Pid, Pid, self()),
            {ok, Pid};
        Other -> Other
    end.

%% @private In standalone worker W's own supervisor: start it and register it.
-spec start_solo(#ss{}, term(), shoal_super_opts:worker_spec()) ->
          {ok, pid()} | {error, term()} | ignore.
start_solo(#ss{id = Id, tab = Tab}, W, Spec) ->
    case start_body(Spec, #{sup => Id, owner => node(), worker => W}) of
        {ok, Pid} ->
            ok = shoal_super_reg:put_worker(Tab, W, Pid, self()),
            {ok, Pid};
        Other -> Other
    end.

%% @doc Start a process from Spec, linked to the caller; Ctx is what a `{M, F, A}' or fun
%% body finds with context/0.
-spec start_body(shoal_super_opts:worker_spec(), map()) -> {ok, pid()} | {error, term()} | ignore.
start_body({gen_server, M, A}, _Ctx) -> gen_server:start_link(M, A, []);
start_body(Body, Ctx) -> {ok, proc_lib:spawn_link(?MODULE, run, [Ctx, Body])}.

%% @private The body of a `{M, F, A}' or fun worker.
-spec run(map(), {module(), atom(), list()} | fun(() -> term())) -> term().
run(Ctx, Body) ->
    put(?CTX, Ctx),
    case Body of
        {M, F, A} -> apply(M, F, A);
        Fun -> Fun()
    end.

%% @doc The group member the calling process is: `{ok, #{sup, owner, group, id}}', or
%% `{error, not_a_group_member}'. A gen_server member finds it once its init/1 has
%% returned; an `{M, F, A}' or fun member from its first instruction.
-spec context() -> {ok, context()} | {error, not_a_group_member}.
context() ->
    case get(?CTX) of
        #{group := _} = Ctx -> {ok, Ctx};
        _ ->
            case find_context(get('$ancestors')) of
                {ok, Ctx} -> put(?CTX, Ctx), {ok, Ctx};
                error -> {error, not_a_group_member}
            end
    end.

%% A gen_server member: its parent is either a remote member's host (whose dictionary
%% holds the context) or a group supervisor under a registered shoal_super supervisor
%% (whose registry knows the member by its pid).
find_context([Parent | _] = Ancestors) when is_pid(Parent) ->
    case erlang:process_info(Parent, dictionary) of
        {dictionary, D} ->
            case proplists:get_value('$shoal_super_hosted', D) of
                #{group := _} = Ctx -> {ok, Ctx};
                _ -> find_registered(Ancestors)
            end;
        undefined -> find_registered(Ancestors)
    end;
find_context(Ancestors) when is_list(Ancestors) -> find_registered(Ancestors);
find_context(_) -> error.

find_registered([]) -> error;
find_registered([A | Rest]) when is_atom(A) ->
    case shoal_super_reg:sup(A) of
        {ok, #ss{tab = Tab}} ->
            case shoal_super_reg:mpid(Tab, self()) of
                {ok, G, W} -> {ok, #{sup => A, owner => node(), group => G, id => W}};
                error -> error
            end;
        error -> find_registered(Rest)
    end;
find_registered([_ | Rest]) -> find_registered(Rest).
