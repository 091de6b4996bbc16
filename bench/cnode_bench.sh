#!/usr/bin/env bash
# Benchmarks the C node against a BEAM node doing the same job (see bench/cnode_bench.erl);
# prints the table and writes bench/results/cnode.md. Targets, not pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
epmd -daemon >/dev/null 2>&1 || true
out=build/cnode/bench
mkdir -p "$out"
erlc -o "$out" bench/cnode_bench.erl
erl -sname "shoal_bench_drv_$$" -setcookie shoal_bench -noshell -pa "$out" \
    -eval "cnode_bench:main([\"$(pwd)\"])"
