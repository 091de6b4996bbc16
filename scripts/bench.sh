#!/usr/bin/env bash
# `make bench`: Shoal against the alternatives (ETS, Elixir Registry/DynamicSupervisor, pg,
# simple_one_for_one) on one node, in one run, same keys; then the cluster against pg and
# global on three local nodes; then the pool tools (bench/results/tools.md, also alone:
# `make bench-tools`); then the C node against a BEAM node. Prints markdown tables,
# writes each beside its CSV data, and draws PNG plots from the CSVs with gnuplot
# (bench/plots.gp): lookup.png, start.png, drain.png.
#
# A full run writes to bench/results/ (committed). A reduced run, any SHOAL_BENCH_*,
# SHOAL_CLUSTER_*, SHOAL_DRAIN_*, SHOAL_MEMBER_* or CNODE_BENCH_* variable set, writes to
# build/bench/scratch/ instead, never over the committed results:
#   SHOAL_BENCH_N=200000 make bench     # scale down (default 1000000; points N/5, N/2, N)
#   SHOAL_BENCH_KEYS=bin                # binary keys instead of integers
set -euo pipefail
cd "$(dirname "$0")/.."
if env | grep -qE '^(SHOAL_BENCH_|SHOAL_CLUSTER_|SHOAL_DRAIN_|SHOAL_MEMBER_|CNODE_BENCH_)' ; then
  RESULTS=${SHOAL_BENCH_RESULTS:-build/bench/scratch}
else
  RESULTS=bench/results
fi
export SHOAL_BENCH_RESULTS="$RESULTS" CNODE_BENCH_OUT="$(pwd)/$RESULTS/cnode.md"
echo "bench: results go to $RESULTS/"
EBIN=_build/default/lib/shoal/ebin
[ -f "$EBIN/shoal.beam" ] || rebar3 compile
mkdir -p build/bench "$RESULTS"
erlc -o build/bench +debug_info bench/shoal_bench.erl
ELIXIR_EBIN=$(elixir -e 'IO.puts :code.lib_dir(:elixir, :ebin)' 2>/dev/null || true)
[ -d "$ELIXIR_EBIN" ] || ELIXIR_EBIN=/usr/lib/elixir/lib/elixir/ebin
# +P: a million workers plus a million baseline processes live at once in the lookup part.
erl -noshell +P 8000000 -pa "$EBIN" -pa build/bench \
    -eval "true = code:add_path(\"$ELIXIR_EBIN\"),
           try shoal_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
# The cluster: three local peer nodes against pg and global ($RESULTS/cluster.md).
#   SHOAL_CLUSTER_N (default 150000 registrations), SHOAL_DRAIN_N (default 100000 workers),
#   SHOAL_CLUSTER_ROUNDS (default 3)
erlc -o build/bench +debug_info bench/shoal_cluster_bench.erl
epmd -daemon >/dev/null 2>&1 || true
erl -noshell -sname "shoal_bench_$$" +P 2000000 -pa "$EBIN" -pa build/bench \
    -eval "try shoal_cluster_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"cluster bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
# The member protocol: synchronous spawns against pg, a remote-home spawn against a call
# round trip, remote against local whereis ($RESULTS/member.md). SHOAL_MEMBER_N,
# SHOAL_MEMBER_ROUNDS.
erlc -o build/bench +debug_info bench/shoal_member_bench.erl
erl -noshell -sname "shoal_member_bench_$$" +P 2000000 -pa "$EBIN" -pa build/bench \
    -eval "try shoal_member_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"member bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
# The pool tools against poolboy, a single gen_server and Task.async_stream
# (tools.md). SHOAL_TOOLS_BENCH_SCALE, SHOAL_TOOLS_BENCH_ROUNDS.
bash scripts/bench_tools.sh
# shoal_super: chains against gen_server pipelines, locally and over three peers
# (bench/results/super.md).
bash scripts/bench_super.sh
# The C node ($RESULTS/cnode.md).
make --no-print-directory cnode-bench
# The plots, from the CSVs.
gnuplot -e "dir='$RESULTS'" bench/plots.gp
echo "bench: wrote $(cd "$RESULTS" && ls *.md *.csv *.png | paste -sd' ' -) in $RESULTS/"
