#!/usr/bin/env bash
# Checks the Promela model of the member protocol (test/model/shoal.pml) with spin.
#
#   scripts/model_check.sh [quick|full|mutants] [NAME...]
#
# quick (make model, a stage of make test): the configurations of test/model/configs tagged
# `quick'. full (make model-full): those tagged `full'. mutants (make model-mutants): those
# tagged `mutant', each a fix turned off (or a known defect of the code as it is), each of
# which must end with a violation (so the model can fail). Names select configurations by
# name. Every search is exhaustive; every run builds in build/model/NAME, and a clean run
# fails the script on any spin finding (an assertion, an invalid end state), a depth or
# memory bound hit (the search would be incomplete), or no summary at all.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=${1:-quick}; shift || true
want=" $* "
model=test/model/shoal.pml
configs=test/model/configs
out=build/model
mkdir -p "$out"
command -v spin >/dev/null || { echo "model: spin is not installed (make deps)" >&2; exit 1; }

pass=0; fail=0; failed=""
run_one() {  # name tags spin_flags cc_flags pan_flags expect
  local name=$1 spinf=$3 ccf=$4 panf=$5 expect=$6 dir="$out/$1" start log
  mkdir -p "$dir"; cp "$model" "$dir/shoal.pml"
  start=$(date +%s%N)
  ( cd "$dir" && rm -f pan pan.c ./*.trail &&
    spin $spinf -a shoal.pml > spin.log 2>&1 &&
    ${CC:-cc} -O2 -w -DSAFETY -DVECTORSZ=1024 $ccf -o pan pan.c > cc.log 2>&1 ) || {  # -O0 in ccf wins
    echo "model: $name: spin/cc failed:"; cat "$dir/spin.log" "$dir/cc.log"
    fail=$((fail + 1)); failed="$failed $name"; return; }
  log="$dir/pan.log"
  ( cd "$dir" && ./pan $panf > pan.log 2>&1 )
  local secs states errors verdict
  secs=$(( ($(date +%s%N) - start) / 100000000 )); secs="$((secs / 10)).$((secs % 10))"
  states=$(awk '/states, stored/ {print $1; exit}' "$log")
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$log" | head -1)
  verdict=ok
  if [ "$expect" = clean ]; then
    # (pan's header lists "invalid end states +": the checks it runs, not a finding;
    # a finding is a "pan:N:" line)
    if [ -z "$errors" ] || [ "$errors" != 0 ] ||
       grep -qE '^pan:[0-9]+:|search depth too small|out of memory|VECTORSZ|Search not completed' "$log"; then
      verdict=FAILED
    fi
  else  # a mutant: the search must report the violation
    if [ -z "$errors" ] || [ "$errors" = 0 ]; then verdict=FAILED; fi
  fi
  printf 'model: %-22s %-7s %12s states %6s s  %s\n' "$name" "$verdict" "${states:-?}" "$secs" \
    "$(grep -oE '^pan:[0-9]+: .*' "$log" | head -1 | cut -c1-90)"
  if [ "$verdict" = ok ]; then pass=$((pass + 1)); else
    fail=$((fail + 1)); failed="$failed $name"
    [ "$expect" = clean ] && { grep -E '^pan:[0-9]+:|error|too small|memory' "$log" | head -5;
      echo "  replay: (cd $dir && spin -t -p $spinf shoal.pml | grep -E 'EV|MSG|RECV|assert')"; }
  fi
}

while read -r name tags spinf ccf panf; do
  case "$name" in ''|\#*) continue ;; esac
  [ "$want" != "  " ] && [[ "$want" != *" $name "* ]] && continue
  spinf=${spinf//,/ }; ccf=${ccf//,/ }; panf=${panf//,/ }; [ "$ccf" = - ] && ccf=""
  case "$mode" in
    quick|full) [[ ",$tags," == *",$mode,"* ]] && run_one "$name" "$tags" "$spinf" "$ccf" "$panf" clean ;;
    mutants) [[ ",$tags," == *",mutant,"* ]] && run_one "$name" "$tags" "$spinf" "$ccf" "$panf" violation ;;
    *) echo "usage: $0 [quick|full|mutants] [NAME...]" >&2; exit 2 ;;
  esac
done < "$configs"

echo "model ($mode): $pass passed, $fail failed${failed:+ (}${failed# }${failed:+)}"
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
