%% @doc The Shoal worker that runs a group member or a chain step worker placed on another
%% node. Each remote member or step worker is one key of the cluster's host pool (see
%% shoal_super:start_host_pool/1), so Shoal places it (windows, drains), moves it on
%% shoal:drain/2, and forgets it when its node is lost; its proxy on the owner node
%% (shoal_super_remote) restarts it on a survivor then.
%%
%% It starts unconfigured (Shoal spawns it by key); the proxy then configures it:
%% <ul>
%% <li>a <b>member</b>: the host starts the member's process (linked) and relays every
%%     message it gets to it, so messages sent to the member while a drain moves it are
%%     held and forwarded by Shoal like any keyed worker's. When the member exits, the host
%%     exits with the same reason (the proxy, and so the group, see it). A move restarts
%%     the member on its new node: a member is a process, its state is not carried.</li>
%% <li>a <b>step worker</b>: the host is the worker (shoal_super_step's logic in this
%%     process); a move carries its state and Shoal forwards the items queued meanwhile.</li>
%% </ul>
%% Either stops when its proxy goes (monitored), so no host outlives its supervisor.
-module(shoal_super_host).
-behaviour(shoal_worker).

-export([init/2, handle_call/3, handle_cast/2, handle_info/2, terminate/2, handoff/1,
         takeover/3]).

-define(STOP_WAIT, 5000).

%% @private
-spec init(term(), term()) -> {ok, unconfigured}.
init(_Key, _Args) -> {ok, unconfigured}.

%% @private
-spec handle_call(term(), gen_server:from(), term()) -> {reply, term(), term()}.
handle_call({'$ss_configure', Conf}, _From, unconfigured) ->
    case start(Conf) of
        {ok, Real, S} -> {reply, {ok, self(), Real}, S};
        {error, _} = E -> {reply, E, unconfigured}
    end;
handle_call({'$ss_configure', _}, _From, S) ->
    {reply, {error, already_configured}, S};
handle_call(_Req, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), term()) -> {noreply, term()}.
handle_cast(_Msg, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), term()) -> {noreply, term()} | {stop, term(), term()}.
handle_info('$ss_stop', S) ->
    {stop, shutdown, S};
handle_info({'$ss_failed', Reason}, S) ->
    {stop, Reason, S};
handle_info({'DOWN', Ref, process, _, _}, #{proxy_ref := Ref} = S) ->
    {stop, shutdown, S};
handle_info({'EXIT', Real, Reason}, #{kind := member, real := Real} = S) ->
    {stop, Reason, S#{real := undefined}};
handle_info({'EXIT', _, _}, S) ->
    {noreply, S};
handle_info(Msg, #{kind := member, real := Real} = S) ->
    Real ! Msg,
    {noreply, S};
handle_info(Msg, #{kind := step, step := St} = S) ->
    case shoal_super_step:handle_msg(Msg, St) of
        {ok, St1} -> {noreply, S#{step := St1}};
        {retired, St1} -> {stop, normal, S#{step := St1}};
        unknown -> {noreply, S}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), term()) -> ok.
terminate(_Reason, #{kind := member, real := Real}) when is_pid(Real) ->
    stop_member(Real);
terminate(_Reason, #{kind := step, step := St}) ->
    shoal_super_step:flush(St);
terminate(_Reason, _S) ->
    ok.

%% @private Moving: a member is stopped here (and started again by takeover/3 on the new
%% node); a step worker's state goes as it is.
-spec handoff(term()) -> {ok, term()}.
handoff(unconfigured) ->
    {ok, unconfigured};
handoff(#{kind := member, real := Real} = S) when is_pid(Real) ->
    stop_member(Real),
    {ok, maps:without([real, proxy_ref], S)};
handoff(S) ->
    {ok, maps:without([proxy_ref], S)}.

%% @private On the new node. A member that fails to start here ends its host at once with
%% the member's reason (its proxy, and so its group, see the exit).
-spec takeover(term(), term(), term()) -> {ok, term()}.
takeover(_Key, unconfigured, _Args) ->
    {ok, unconfigured};
takeover(_Key, #{kind := member, conf := Conf} = S0, _Args) ->
    case start(Conf) of
        {ok, Real, S} -> moved(S, Real), {ok, S};
        {error, R} -> self() ! {'$ss_failed', R}, {ok, S0#{real => undefined}}
    end;
takeover(_Key, #{kind := step, step := St} = S0, _Args) ->
    S = S0#{proxy_ref => erlang:monitor(process, maps:get(proxy, S0))},
    shoal_super_step:adopt(St),
    moved(S, self()),
    {ok, S}.

moved(#{proxy := Proxy}, Real) ->
    Proxy ! {'$ss_moved', self(), Real},
    ok.

start(#{kind := member, proxy := Proxy, spec := Spec, ctx := Ctx} = Conf) ->
    put('$shoal_super_hosted', Ctx),
    Ref = erlang:monitor(process, Proxy),
    case shoal_super_worker:start_body(Spec, Ctx) of
        {ok, Real} ->
            {ok, Real, #{kind => member, real => Real, proxy => Proxy, proxy_ref => Ref,
                         conf => Conf}};
        ignore -> erlang:demonitor(Ref), {error, ignore};
        {error, _} = E -> erlang:demonitor(Ref), E
    end;
start(#{kind := step, proxy := Proxy, sc := SC, conf := StepConf, widx := WIdx}) ->
    Ref = erlang:monitor(process, Proxy),
    St = shoal_super_step:new(SC, StepConf, WIdx),
    {ok, self(), #{kind => step, step => St, proxy => Proxy, proxy_ref => Ref}}.

stop_member(Real) ->
    unlink(Real),
    Ref = erlang:monitor(process, Real),
    exit(Real, shutdown),
    receive
        {'DOWN', Ref, process, Real, _} -> ok
    after ?STOP_WAIT ->
            exit(Real, kill),
            receive {'DOWN', Ref, process, Real, _} -> ok end
    end.
