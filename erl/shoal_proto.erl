%% @doc The member protocol's envelope: the one module that builds, sends and checks it.
%%
%% The protocol (who sends what, when, and what it guarantees) is docs/protocol.md, whose
%% table lists every body. Every message between members, and every answer to a request, is
%% `{'$shoal', Vsn, Pool, Body}'; this module builds the envelope, sends it without ever
%% auto-connecting (members only talk to connected peers), addresses answers to the
%% requester's alias (so a requester gets at most one answer, and none after it gave up),
%% and checks the version of what arrives. shoal_member handles every body sent to a
%% member.
-module(shoal_proto).

-export([chunks/2]).
-export([vsn/0, min_vsn/0, send/3, send/4, send_node/4, reply/4, request_ref/0, drop_ref/1,
         is_msg/1, body/2, body/3, member_name/1]).
-export_type([body/0, caller/0, result/0]).

-define(VSN, 2).      %% the newest version this code speaks
-define(MIN_VSN, 1).  %% the oldest
-define(BASE_VSN, 1). %% the version of every body whose form version 1 already had

-type caller() :: {pid(), reference(), boolean()}.
-type result() :: {ok, node(), pid(), shoal_nif:version()} | retry | {error, term()}.
-type body() :: tuple().

%% @doc The newest protocol version this node's members speak: the newest this code
%% speaks, or the application's `protocol_vsn' if that is set lower (a cluster being
%% upgraded pins it to the version its oldest nodes speak, then lifts it, node by node,
%% once every node runs the new code; see docs/protocol.md).
-spec vsn() -> pos_integer().
vsn() ->
    case application:get_env(shoal, protocol_vsn) of
        {ok, V} when is_integer(V), V >= ?MIN_VSN, V < ?VSN -> V;
        _ -> ?VSN
    end.

%% @doc The oldest protocol version this member still speaks.
-spec min_vsn() -> pos_integer().
min_vsn() -> ?MIN_VSN.

%% @doc The registered name of Pool's member on every node.
-spec member_name(atom()) -> atom().
member_name(Pool) -> list_to_atom("shoal_ps_" ++ atom_to_list(Pool)).

%% @doc Send Body of Pool's protocol to a pid (a member, a caller or a worker), in a form
%% every version speaks (so stamped version 1).
-spec send(pid(), atom(), body()) -> ok.
send(To, Pool, Body) -> send(To, Pool, ?BASE_VSN, Body).

%% @doc Send Body in the form of protocol version Vsn, which the receiver must speak (the
%% sender knows it from the receiver's `hello').
-spec send(pid(), atom(), pos_integer(), body()) -> ok.
send(To, Pool, Vsn, Body) ->
    _ = erlang:send(To, {'$shoal', Vsn, Pool, Body}, [noconnect]),
    ok.

%% @doc Send Body to Pool's member on Node (by its registered name).
-spec send_node(node(), atom(), atom(), body()) -> ok.
send_node(Node, Name, Pool, Body) ->
    _ = erlang:send({Name, Node}, {'$shoal', ?BASE_VSN, Pool, Body}, [noconnect]),
    ok.

%% @doc Answer a caller `{Pid, Ref, _}' or `{Pid, Ref}' with `{Tag, Ref, ...Rest}'. Ref is
%% the caller's alias (`erlang:alias([reply])'): the answer is sent to it, so a caller gets
%% at most one answer per request and none after it gave up.
-spec reply(caller() | {pid(), reference()}, atom(), atom(), [term()]) -> ok.
reply({_Pid, Ref, _Sync}, Pool, Tag, Rest) -> send_alias(Ref, Pool, list_to_tuple([Tag, Ref | Rest]));
reply({_Pid, Ref}, Pool, Tag, Rest) -> send_alias(Ref, Pool, list_to_tuple([Tag, Ref | Rest])).

send_alias(Alias, Pool, Body) ->
    _ = erlang:send(Alias, {'$shoal', ?BASE_VSN, Pool, Body}, [noconnect]),
    ok.

%% @doc A fresh reply address for one request (see reply/4).
-spec request_ref() -> reference().
request_ref() -> erlang:alias([reply]).

%% @doc Stop accepting answers to a request given up.
-spec drop_ref(reference()) -> ok.
drop_ref(Ref) ->
    _ = erlang:unalias(Ref),
    ok.

%% @doc Whether Msg is a protocol envelope of any version.
-spec is_msg(term()) -> boolean().
is_msg({'$shoal', V, P, B}) when is_integer(V), is_atom(P), is_tuple(B) -> true;
is_msg(_) -> false.

%% @doc body/3 for a member that speaks every version this code speaks.
-spec body(term(), atom()) -> {ok, body()} | {error, {bad_version, term()} | bad_message}.
body(Msg, Pool) -> body(Msg, Pool, ?VSN).

%% @doc The body of a message of Pool in a version from the oldest this code speaks to Max
%% (the newest the member speaks, vsn/0), or an error.
-spec body(term(), atom(), pos_integer()) ->
          {ok, body()} | {error, {bad_version, term()} | bad_message}.
body({'$shoal', V, Pool, Body}, Pool, Max) when is_integer(V), V >= ?MIN_VSN, V =< Max,
                                                  is_tuple(Body), tuple_size(Body) >= 1 ->
    {ok, Body};
body({'$shoal', V, _, _}, _, Max) when is_integer(V), (V < ?MIN_VSN orelse V > Max) ->
    {error, {bad_version, V}};
body(_, _, _) ->
    {error, bad_message}.

%% @doc L cut into the lists of at most N elements that go out one message each (batches,
%% sync chunks), in order, in one pass; `[]' for an empty L.
-spec chunks([T], pos_integer()) -> [[T, ...]].
chunks(L, N) -> chunks(L, N, N, [], []).

chunks([], _N, _Left, [], Acc) -> lists:reverse(Acc);
chunks([], _N, _Left, Cur, Acc) -> lists:reverse(Acc, [lists:reverse(Cur)]);
chunks(L, N, 0, Cur, Acc) -> chunks(L, N, N, [], [lists:reverse(Cur) | Acc]);
chunks([X | L], N, Left, Cur, Acc) -> chunks(L, N, Left - 1, [X | Cur], Acc).
