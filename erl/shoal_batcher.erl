%% @doc A batcher: items pushed one by one are cut into batches (at `limit' items, after
%% `timeout' ms from a batch's first item, or on flush/1) and handed to the handler module
%% one batch at a time, in the order they were cut.
%%
%% The handler implements `init(Args) -> {ok, State}' and
%% `handle_batch(Batch, State) -> {ok, State}', and optionally
%% `handle_error(Batch, Attempt, Error, State)' (see shoal_retry). A batch whose
%% handle_batch/2 raises or returns anything but `{ok, State}' is retried per the `retry'
%% option; the next batch waits meanwhile (that is what keeps the order). Once its retries
%% are exhausted the batch is reported (a logger error that carries the whole batch, and
%% the `failed' counter of stats/1) and the handler goes on with the next one.
%%
%% Two processes under one supervisor (registered as the name): the accumulator, which
%% receives the pushes, cuts batches and keeps every cut batch until the handler confirms
%% it, and the handler. If the handler process dies (which a failing handle_batch/2 does
%% not cause: that is caught), its supervisor restarts it and the accumulator sends it
%% again every batch not yet confirmed, in order, so no cut batch is lost; the batch it was
%% handling when it died is handled again.
-module(shoal_batcher).

-include("shoal_batcher.hrl").

-export([start_link/2, child_spec/1, child_spec/2, push/2, flush/1, flush/2, stop/1,
         stats/1]).

-export_type([name/0, options/0]).

-type name() :: atom().
-type options() :: #{handler := module(),
                     args => term(),
                     limit => pos_integer(),
                     timeout => timeout(),
                     order => fifo | lifo,
                     retry => #{count => non_neg_integer(), backoff => non_neg_integer()},
                     hibernate_after => timeout(),
                     max_pending => pos_integer() | infinity}
                 | [{atom(), term()}].

-callback init(Args :: term()) -> {ok, State :: term()}.
-callback handle_batch(Batch :: [term()], State :: term()) -> {ok, NewState :: term()}.
-callback handle_error(Batch :: [term()], Attempt :: pos_integer(),
                       Error :: shoal_retry:error(), State :: term()) ->
    {retry, NewState :: term()} | {backoff, Ms :: non_neg_integer()} | halt | term().
-optional_callbacks([handle_error/4]).

-define(KNOWN, [handler, args, limit, timeout, order, retry, hibernate_after, max_pending]).

%% @doc Start batcher `Name'. `Opts' (map or proplist): `handler' (required), `args' (given
%% to init/1), `limit' (items per batch, default 100), `timeout' (ms from a batch's first
%% item until it is cut, or `infinity'; default 1000), `order' (`fifo', the default: items
%% in the order they were pushed; `lifo': reversed), `retry' (`#{count, backoff}'),
%% `hibernate_after' (ms, default `infinity'), `max_pending' (cut batches waiting to be
%% handled beyond which push/2 returns `{error, overloaded}'; default `infinity').
-spec start_link(name(), options()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    case validate(Name, Opts) of
        {ok, Cfg} -> shoal_batcher_sup:start_link(Cfg);
        {error, _} = E -> E
    end.

%% @doc child_spec/2 from `{Name, Opts}' or options with a `name' key.
-spec child_spec({name(), options()} | map() | list()) -> supervisor:child_spec().
child_spec({Name, Opts}) -> child_spec(Name, Opts);
child_spec(Opts) ->
    {Name, Rest} = shoal_tools_opts:split_name(Opts),
    child_spec(Name, Rest).

%% @doc A child spec for the user's supervision tree (see start_link/2).
-spec child_spec(name(), options()) -> supervisor:child_spec().
child_spec(Name, Opts) ->
    #{id => {?MODULE, Name}, start => {?MODULE, start_link, [Name, Opts]},
      type => supervisor, restart => permanent, shutdown => infinity}.

%% @doc Add `Item' to the current batch: `ok', or `{error, overloaded}' when `max_pending'
%% batches wait to be handled. Items from one process keep their order.
-spec push(name(), term()) -> ok | {error, term()}.
push(Name, Item) ->
    case persistent_term:get(?BATCHER_KEY(Name), undefined) of
        #shoal_batcher{max_pending = infinity, acc = Acc} ->
            erlang:send(Acc, {'$gen_cast', {push, Item}}),
            ok;
        #shoal_batcher{max_pending = Max, acc = Acc, pending = A} ->
            case atomics:get(A, 1) >= Max of
                true -> {error, overloaded};
                false -> erlang:send(Acc, {'$gen_cast', {push, Item}}), ok
            end;
        undefined ->
            {error, {no_such_batcher, Name}}
    end.

%% @equiv flush(Name, 5000)
-spec flush(name()) -> ok | {error, term()}.
flush(Name) -> flush(Name, 5000).

%% @doc Cut the current batch now, and return once every batch cut so far (this one
%% included) has been handled or given up. Exits like gen_server:call/3 on timeout.
-spec flush(name(), timeout()) -> ok | {error, term()}.
flush(Name, Timeout) ->
    case persistent_term:get(?BATCHER_KEY(Name), undefined) of
        #shoal_batcher{acc = Acc} -> gen_server:call(Acc, flush, Timeout);
        undefined -> {error, {no_such_batcher, Name}}
    end.

%% @doc Flush, then stop the batcher.
-spec stop(name()) -> ok | {error, term()}.
stop(Name) ->
    case flush(Name, infinity) of
        ok ->
            try gen_server:stop(Name, normal, infinity)
            catch exit:_ -> {error, {no_such_batcher, Name}}
            end;
        E -> E
    end.

%% @doc `buffered' (items in the batch being filled), `pending' (batches cut and not yet
%% handled), `batches' (cut), `handled', `failed' and `retries'.
-spec stats(name()) -> map() | {error, term()}.
stats(Name) ->
    case persistent_term:get(?BATCHER_KEY(Name), undefined) of
        #shoal_batcher{acc = Acc, pending = A, stats = C} ->
            #{buffered => gen_server:call(Acc, buffered), pending => atomics:get(A, 1),
              batches => counters:get(C, ?B_BATCHES), handled => counters:get(C, ?B_HANDLED),
              failed => counters:get(C, ?B_FAILED), retries => counters:get(C, ?B_RETRIES)};
        undefined ->
            {error, {no_such_batcher, Name}}
    end.

validate(Name, _) when not is_atom(Name) -> {error, {bad_name, Name}};
validate(Name, Opts0) ->
    case shoal_tools_opts:to_map(Opts0, ?KNOWN) of
        {ok, Opts} ->
            try
                Mod = shoal_tools_opts:callback_module(handler, Opts,
                                                       [{init, 1}, {handle_batch, 2}]),
                V = fun(K, D, F) -> shoal_tools_opts:get(K, Opts, D, F) end,
                PosOrInf = fun(X) -> X =:= infinity orelse (is_integer(X) andalso X > 0) end,
                Retry = case shoal_retry:parse(maps:get(retry, Opts, undefined)) of
                            {ok, R} -> R;
                            {error, Why} -> throw(Why)
                        end,
                {ok, #{name => Name, handler => Mod, args => maps:get(args, Opts, undefined),
                       limit => V(limit, 100, fun(X) -> is_integer(X) andalso X > 0 end),
                       timeout => V(timeout, 1000, PosOrInf),
                       order => V(order, fifo, fun(X) -> X =:= fifo orelse X =:= lifo end),
                       retry => Retry,
                       hibernate_after => V(hibernate_after, infinity, PosOrInf),
                       max_pending => V(max_pending, infinity, PosOrInf)}}
            catch throw:Reason -> {error, Reason}
            end;
        {error, _} = E ->
            E
    end.
