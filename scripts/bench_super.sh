#!/usr/bin/env bash
# `make bench-super` (and the last part of `make bench`): shoal_super chains against the same
# pipeline as linked gen_servers with gen_server:call hand-off, on one node and over three
# local peer nodes, plus auto-scaling reaction time. Writes bench/results/super.md.
#   SHOAL_SUPER_BENCH_N=50000 make bench-super      # smaller (default 200000 per local round)
#   SHOAL_SUPER_BENCH_ROUNDS=3                       # fewer rounds (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
EBIN=_build/default/lib/shoal/ebin
[ -f "$EBIN/shoal.beam" ] || rebar3 compile
mkdir -p build/bench bench/results
erlc -o build/bench +debug_info bench/shoal_super_bench.erl
epmd -daemon >/dev/null 2>&1 || true
erl -noshell -sname "shoal_super_bench_$$" -pa "$EBIN" -pa build/bench \
    -eval "try shoal_super_bench:main() of ok -> halt(0)
           catch C:R:S -> io:format(standard_error, \"shoal_super bench crashed: ~p:~p~n~p~n\", [C, R, S]), halt(1)
           end."
