%% @doc The names and the replica of a cluster-wide shoal_cron scheduler: the internal
%% Shoal pool that hosts it, its keepers' registered names, and the synchronous update of
%% the replica every keeper holds (see shoal_cron_keeper). The scheduler
%% (shoal_cron_sched), its host and its keepers use it; it uses none of them.
-module(shoal_cron_replica).

-export([pool_name/1, reg_name/1, replica/1, replicate/4]).

-define(REPLICATE_TIMEOUT, 2000).

%% @doc The internal Shoal pool that hosts the cluster-wide scheduler `Name'.
-spec pool_name(atom()) -> atom().
pool_name(Name) -> list_to_atom("shoal_cron." ++ atom_to_list(Name)).

%% @doc The keeper's registered name (also the name of its ETS table).
-spec reg_name(atom()) -> atom().
reg_name(Name) -> list_to_atom("shoal_cron_keeper." ++ atom_to_list(Name)).

%% @doc This node's replica of scheduler `Name' (read from ETS, never from the process).
-spec replica(atom()) -> shoal_cron_sched:sched().
replica(Name) -> ets:lookup_element(reg_name(Name), replica, 3).

%% @doc Store version `V' of the durable state on every member's keeper; returns once
%% each has answered (or after a timeout for those that did not).
-spec replicate(atom(), atom(), non_neg_integer(), shoal_cron_sched:sched()) -> ok.
replicate(Name, Pool, V, Durable) ->
    Nodes = try shoal:nodes(Pool) catch exit:_ -> [node()] end,
    Reg = reg_name(Name),
    Reqs = [gen_server:send_request({Reg, N}, {replica, V, Durable}) || N <- Nodes],
    Deadline = {abs, erlang:monotonic_time(millisecond) + ?REPLICATE_TIMEOUT},
    _ = [gen_server:receive_response(R, Deadline) || R <- Reqs],
    ok.

