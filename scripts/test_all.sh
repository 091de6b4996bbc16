#!/usr/bin/env bash
# `make test`: every suite, in order of speed. Stops at the first failing stage and says
# which; ends with one 'N passed, N failed' line over the stages.
set -uo pipefail
cd "$(dirname "$0")/.."
stages=(c-test c-test-asan model nif-asan cnode-test erl-test elixir-test install-test dialyzer)
passed=0; failed=0
for s in "${stages[@]}"; do
  echo "==> make $s"
  start=$(date +%s)
  if make --no-print-directory "$s"; then
    passed=$((passed + 1)); echo "==> $s ok ($(( $(date +%s) - start )) s)"
  else
    failed=$((failed + 1)); echo "==> $s FAILED ($(( $(date +%s) - start )) s)"
    break
  fi
done
echo "stages: $passed passed, $failed failed"
[ "$failed" = 0 ]
