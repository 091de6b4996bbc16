#!/usr/bin/env bash
# `make bench`: Shoal against the alternatives (ETS, Elixir Registry/DynamicSupervisor, pg,
# simple_one_for_one) on one node, in one run, same keys. Prints a markdown table and writes
# bench/results/single_node.md.
#   SHOAL_BENCH_N=200000 make bench     # scale down (default 1000000; the small point is N/5)
#   SHOAL_BENCH_KEYS=bin                # binary keys instead of integers
set -euo pipefail
cd "$(dirname "$0")/.."
EBIN=_build/default/lib/shoal/ebin
[ -f "$EBIN/shoal.beam" ] || rebar3 compile
mkdir -p build/bench bench/results
erlc -o build/bench +debug_info bench/shoal_bench.erl
ELIXIR_EBIN=$(elixir -e 'IO.puts :code.lib_dir(:elixir, :ebin)' 2>/dev/null || true)
[ -d "$ELIXIR_EBIN" ] || ELIXIR_EBIN=/usr/lib/elixir/lib/elixir/ebin
# +P: a million workers plus a million baseline processes live at once in the lookup part.
exec erl -noshell +P 8000000 -pa "$EBIN" -pa build/bench \
    -eval "true = code:add_path(\"$ELIXIR_EBIN\"),
           try shoal_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
