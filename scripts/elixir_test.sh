#!/usr/bin/env bash
# The Elixir acceptance suite: test/elixir is a Mix project that depends on Shoal by path
# (Shoal's own mix.exs: the Erlang application, the Elixir face, the NIF through `make nif`),
# offline, and drives it from ExUnit. Works from a clean clone; exits non-zero when a test
# fails.
set -euo pipefail
cd "$(dirname "$0")/../test/elixir"
export MIX_ENV=test
# Shoal is a path dependency: nothing to fetch, so no Hex and no network; mix recompiles it
# when it changed. --warnings-as-errors holds the Elixir face to the same bar as erl/.
mix compile --warnings-as-errors
mix test "$@"
