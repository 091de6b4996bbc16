%% shoal_tools_bench_worker: the one callback module behind every side of
%% bench/shoal_tools_bench.erl, so each side runs the same code per request: a gen_server
%% (the single-server baseline and poolboy's workers), a shoal_fixed worker, a shoal_shared
%% callback module and a shoal_batcher handler. The state is a map.
-module(shoal_tools_bench_worker).
-behaviour(gen_server).

-export([start_link/1]).
%% gen_server, shoal_shared (init/1, handle_call/3, handle_cast/2), shoal_batcher (init/1)
-export([init/1, handle_call/3, handle_cast/2]).
%% shoal_fixed
-export([init/2, handle_job/2]).
%% shoal_batcher
-export([handle_batch/2]).

start_link(Args) -> gen_server:start_link(?MODULE, Args, []).

init(Args) -> {ok, Args}.
init(_Index, Args) -> {ok, Args}.

handle_call(Req, _From, S) -> {R, S1} = serve(Req, S), {reply, R, S1}.

handle_cast({count, C}, S) -> counters:add(C, 1, 1), {noreply, S};
handle_cast(Req, S) -> {_, S1} = serve(Req, S), {noreply, S1}.

handle_job({count, C}, S) -> counters:add(C, 1, 1), {noreply, S};
handle_job(Req, S) -> {R, S1} = serve(Req, S), {reply, R, S1}.

handle_batch(Batch, #{count := C} = S) -> counters:add(C, 1, length(Batch)), {ok, S}.

serve({echo, X}, S) -> {X, S};
serve({get, K}, S) -> {maps:get(K, S, undefined), S};
serve({put, K, V}, S) -> {ok, S#{K => V}};
%% Reads that do some work: 50 lookups (a few microseconds), 500 lookups (tens of them).
serve({scan, K}, S) -> {scan(K, 50, S), S};
serve({scan500, K}, S) -> {scan(K, 500, S), S}.

scan(K, N, S) -> lists:foldl(fun(I, A) -> A + maps:get((K + I) rem 1000, S, 0) end, 0, lists:seq(1, N)).
