#!/usr/bin/env bash
# `make bench-tools` (and the last part of scripts/bench.sh): the pool tools against the
# alternatives a user would pick (poolboy, a single gen_server, Elixir's Task.async_stream),
# in one run, as ratios with their spread. Writes bench/results/tools.md.
#   SHOAL_TOOLS_BENCH_SCALE=0.2 make bench-tools    # smaller (default 1.0)
#   SHOAL_TOOLS_BENCH_ROUNDS=3                      # rounds per comparison (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
EBIN=_build/default/lib/shoal/ebin
[ -f "$EBIN/shoal_fixed.beam" ] || rebar3 compile
mkdir -p build/bench bench/results
erlc -o build/bench +debug_info bench/shoal_tools_bench_worker.erl bench/shoal_tools_bench.erl
ELIXIR_EBIN=$(elixir -e 'IO.puts :code.lib_dir(:elixir, :ebin)' 2>/dev/null || true)
[ -d "$ELIXIR_EBIN" ] || ELIXIR_EBIN=/usr/lib/elixir/lib/elixir/ebin
POOLBOY_EBIN=$(erl -noshell -eval 'io:format("~s", [code:lib_dir(poolboy, ebin)]), halt().' 2>/dev/null || true)
if [ ! -d "$POOLBOY_EBIN" ]; then
  echo "bench_tools: poolboy not found (Debian package erlang-poolboy; make deps)" >&2
  exit 1
fi
erl -noshell -pa "$EBIN" -pa build/bench -pa "$POOLBOY_EBIN" \
    -eval "true = code:add_path(\"$ELIXIR_EBIN\"),
           try shoal_tools_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"tools bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
