#!/usr/bin/env bash
# Run the given Common Test suites (names without .erl) on a distributed CT node, the way
# scripts/erl_test.sh runs all of them: `make chaos` uses it with shoal_chaos_SUITE.
set -euo pipefail
cd "$(dirname "$0")/.."
epmd -daemon >/dev/null 2>&1 || true
suites=$(IFS=,; echo "$*")
rebar3 ct --sname "shoal_ct_$$" --setcookie shoal_test --dir test/erl --suite "$suites"
