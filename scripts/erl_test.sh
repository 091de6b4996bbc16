#!/usr/bin/env bash
# EUnit and Common Test for the Erlang side. The CT node is distributed (short names) so
# suites can start OTP peer nodes and talk to the C node; epmd comes up with it.
set -euo pipefail
cd "$(dirname "$0")/.."
epmd -daemon >/dev/null 2>&1 || true
rebar3 eunit
suites=$(ls test/erl/*_SUITE.erl 2>/dev/null | xargs -rn1 basename | sed 's/\.erl$//' | paste -sd, -)
if [ -n "$suites" ]; then
  rebar3 ct --sname "shoal_ct_$$" --setcookie shoal_test --dir test/erl --suite "$suites"
fi
