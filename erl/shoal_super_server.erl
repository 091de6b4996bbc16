%% @doc The server of one shoal_super supervisor: it owns the registry table (see
%% shoal_super_reg), publishes the supervisor under its id (persistent_term), and watches every group, chain
%% and standalone worker so that one which ends on its own (past its restart intensity, or
%% a chain stopped by a step) leaves no entry behind. It is on no message path: sends,
%% chain hand-offs and lookups read the registry directly.
-module(shoal_super_server).
-behaviour(gen_server).

-include("shoal_super.hrl").

-export([start_link/2, watch/4, stop_chain/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(st, {ss :: #ss{}, watched = #{} :: #{reference() => {atom(), term(), pid()}}}).

%% @doc Start the server of supervisor Id (the first child of its top supervisor).
-spec start_link(atom(), atom() | undefined) -> {ok, pid()}.
start_link(Id, Cluster) -> gen_server:start_link(?MODULE, {Id, Cluster}, []).

%% @doc Watch entity Key of Kind (`group', `chain' or `worker') run by Pid: when Pid ends,
%% its registry entries go.
-spec watch(#ss{}, group | chain | worker, term(), pid()) -> ok.
watch(#ss{server = S}, Kind, Key, Pid) -> gen_server:cast(S, {watch, Kind, Key, Pid}).

%% @doc Stop chain C (a step returned `{stop, Reason}'), from outside the chain's tree.
-spec stop_chain(#ss{}, term(), term()) -> ok.
stop_chain(#ss{server = S}, C, Reason) -> gen_server:cast(S, {stop_chain, C, Reason}).

%% @private
-spec init({atom(), atom() | undefined}) -> {ok, #st{}}.
init({Id, Cluster}) ->
    process_flag(trap_exit, true),
    SS = #ss{id = Id, tab = shoal_super_reg:new(), server = self(), cluster = Cluster},
    ok = shoal_super_reg:publish(SS),
    {ok, #st{ss = SS}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(_Req, _From, St) -> {reply, {error, unknown_call}, St}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({watch, Kind, Key, Pid}, #st{watched = W} = St) ->
    Ref = erlang:monitor(process, Pid),
    {noreply, St#st{watched = W#{Ref => {Kind, Key, Pid}}}};
handle_cast({stop_chain, C, Reason}, #st{ss = SS} = St) ->
    %% The chain's own processes cannot do this: they would wait on their own shutdown.
    _ = shoal_super_chain:remove(SS, C, {stopped, Reason}),
    {noreply, St};
handle_cast(_Msg, St) -> {noreply, St}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, term(), #st{}}.
handle_info({'DOWN', Ref, process, _, _}, #st{ss = #ss{tab = Tab}, watched = W} = St) ->
    case maps:take(Ref, W) of
        {{group, G, Pid}, W1} -> shoal_super_reg:delete_group(Tab, G, Pid), {noreply, St#st{watched = W1}};
        {{worker, Id, Pid}, W1} -> shoal_super_reg:delete_worker(Tab, Id, Pid), {noreply, St#st{watched = W1}};
        {{chain, C, Mgr}, W1} -> shoal_super_reg:delete_chain(Tab, C, Mgr), {noreply, St#st{watched = W1}};
        error -> {noreply, St}
    end;
handle_info({'EXIT', _Parent, Reason}, St) ->
    {stop, Reason, St};
handle_info(_Info, St) -> {noreply, St}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, _St) ->
    %% The published record stays: a lookup checks that its server is alive, and the next
    %% start under this id replaces it. Erasing it here would race with that restart
    %% (read ours, the new server publishes, erase theirs).
    ok.
