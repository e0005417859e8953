#!/usr/bin/env bash
# Run the kill-and-resume test N times with different kill seeds and report the pass count.
#   scripts/kill_resume_loop.sh 20            # seeds 1..20
#   START=100 scripts/kill_resume_loop.sh 5   # seeds 100..104
# Each iteration SIGKILLs pipeline runs at seeded random points (rollouts, extraction,
# selection), resumes them and compares results.json with an uninterrupted run.
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
start="${START:-1}"
py="${PYTEST:-.venv/bin/pytest}"
log="${LOG:-${TMPDIR:-/tmp}/kill_resume_loop.log}"
pass=0
fail=0
: >"$log"
for ((i = start; i < start + n; i++)); do
    t0=$(date +%s)
    if CLIFF_LENS_KILL_SEED="$i" "$py" tests/test_kill_resume.py -q -s -p no:cacheprovider >>"$log" 2>&1; then
        pass=$((pass + 1))
        r=pass
    else
        fail=$((fail + 1))
        r=FAIL
    fi
    echo "seed $i: $r ($(($(date +%s) - t0)) s)" | tee -a "$log"
done
echo "kill-resume: $pass/$n passed, $fail failed (log: $log)"
[ "$fail" -eq 0 ]
