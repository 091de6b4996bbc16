#!/usr/bin/env bash
# `make demo`: Shoal on one node — a million workers with a progress bar, a million routed
# calls, a thousand crashes that heal on the next call, idle offloading, the stats — then on
# a local cluster of three nodes: a million workers placed across them, one node drained
# live while clients call, a node killed and its keys served again; then the pool tools
# (fixed pool, shared state, tasks, batcher, cron, cluster-wide cron) in a few seconds; then
# shoal_super's groups, a chain and standalone workers.
#   SHOAL_DEMO_N=100000 make demo     # smaller (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
EBIN=_build/default/lib/shoal/ebin
[ -f "$EBIN/shoal.beam" ] || rebar3 compile
mkdir -p build/demo
# Progress lines redraw in place on a terminal; piped or logged, they are plain lines.
if [ -t 1 ]; then export SHOAL_DEMO_TTY=1; else export SHOAL_DEMO_TTY=0; fi
erlc -o build/demo +debug_info demo/shoal_demo.erl demo/shoal_cluster_demo.erl \
    demo/shoal_tools_demo.erl
epmd -daemon >/dev/null 2>&1 || true
# Part 1: one node.
erl -noshell +P 4000000 -pa "$EBIN" -pa build/demo \
    -eval 'case shoal_demo:main() of ok -> halt(0); _ -> halt(1) end.'
# Part 2: a local cluster of three nodes (started from this controller node with OTP peer).
erl -noshell -sname "shoal_demo_$$" +P 4000000 -pa "$EBIN" -pa build/demo \
    -eval 'case shoal_cluster_demo:main() of ok -> halt(0); _ -> halt(1) end.'
# Part 3: the pool tools (distributed, for the cluster-wide cron on three peers).
erl -noshell -sname "shoal_tools_demo_$$" -pa "$EBIN" -pa build/demo \
    -eval 'case shoal_tools_demo:main() of ok -> halt(0); _ -> halt(1) end.'
# Part 4: shoal_super: groups, a chain and standalone workers (a few seconds).
erlc -o build/demo +debug_info demo/shoal_super_demo.erl
exec erl -noshell -pa "$EBIN" -pa build/demo \
    -eval 'case shoal_super_demo:main() of ok -> halt(0); _ -> halt(1) end.'
