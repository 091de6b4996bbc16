#!/usr/bin/env bash
# `make bench`: Shoal against the alternatives (ETS, Elixir Registry/DynamicSupervisor, pg,
# simple_one_for_one) on one node, in one run, same keys, then the cluster against pg and
# global on three local nodes. Prints markdown tables and writes bench/results/single_node.md
# and bench/results/cluster.md (the Makefile then runs the C node's bench: cnode.md).
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
erl -noshell +P 8000000 -pa "$EBIN" -pa build/bench \
    -eval "true = code:add_path(\"$ELIXIR_EBIN\"),
           try shoal_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
# The cluster: three local peer nodes against pg and global (bench/results/cluster.md).
#   SHOAL_CLUSTER_N (default 150000 registrations), SHOAL_DRAIN_N (default 100000 workers)
erlc -o build/bench +debug_info bench/shoal_cluster_bench.erl
epmd -daemon >/dev/null 2>&1 || true
erl -noshell -sname "shoal_bench_$$" +P 2000000 -pa "$EBIN" -pa build/bench \
    -eval "try shoal_cluster_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"cluster bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
# shoal_super: chains against gen_server pipelines, locally and over three peers
# (bench/results/super.md).
bash scripts/bench_super.sh
