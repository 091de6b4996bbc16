#!/usr/bin/env bash
# The Elixir acceptance suite: test/elixir is a Mix project that depends on Shoal by path
# (compiled by Debian's rebar3 through MIX_REBAR3, offline) and drives it from ExUnit.
# Works from a clean clone; exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/../test/elixir"
MIX_REBAR3="${MIX_REBAR3:-$(command -v rebar3)}"
if [ -z "$MIX_REBAR3" ]; then echo "elixir_test: rebar3 not found (make deps)" >&2; exit 1; fi
export MIX_REBAR3 MIX_ENV=test
# Shoal is a path dependency: nothing to fetch, so no Hex and no network; mix recompiles it
# (rebar3 bare compile, which runs the `make c` pre-hook in the repo root) when it changed.
mix test "$@"
