#!/usr/bin/env bash
# The Elixir acceptance suite: test/elixir is a Mix project that depends on Shoal by path
# (Shoal's own mix.exs: the Erlang application, the Elixir face, the NIF through `make nif`),
# offline, and drives it from ExUnit. Works from a clean clone; exits non-zero when a test
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# Shoal's own Mix build, held to the same bar as erl/ (MIX_ENV=dev: rebar3 owns _build/test).
MIX_ENV=dev mix compile --warnings-as-errors
cd test/elixir
export MIX_ENV=test
# Shoal is a path dependency: nothing to fetch, so no Hex and no network; mix recompiles it
# when it changed.
mix test "$@"
