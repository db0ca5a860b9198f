#!/usr/bin/env bash
# The project's tests, several times in a row, on a machine loaded with `stress-ng --cpu 2` (a busy CI
# runner): a test that can fail when nothing is broken shows itself here. Each run's outcome and time is
# printed at the end; the script exits 1 if any run failed. Needs what the tests need (scripts/setup.sh; the
# kind bed up for tests/e2e).
#
#   scripts/loaded-runs.sh                  # three runs of `python3 -m pytest -ra`
#   RUNS=1 scripts/loaded-runs.sh -x tests/test_pause.py   # other pytest arguments
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
logs=$(mktemp -d /tmp/pytest-chaos-loaded-runs.XXXXXX)

# The tests that count stress-ng processes leave out those with this in their environment.
PYTEST_CHAOS_BACKGROUND_LOAD=1 stress-ng --cpu 2 --timeout 0 --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null' EXIT
echo "==> stress-ng --cpu 2 (pid $load); $runs runs of: python3 -m pytest -ra $*; logs in $logs"

failed=0
summary=()
for run in $(seq 1 "$runs"); do
    begun=$(date +%s)
    python3 -m pytest -ra "$@" > "$logs/run-$run.log" 2>&1
    status=$?
    line=$(grep -E '^=+ .*(passed|failed|error).* in ' "$logs/run-$run.log" | tail -1)
    summary+=("run $run: exit $status, $(( $(date +%s) - begun )) s: ${line:-no summary line}")
    echo "${summary[-1]}"
    ((status == 0)) || failed=1
    if ! kill -0 "$load" 2>/dev/null; then  # a run that killed the load was not a loaded run: say so, stop
        echo "the load (stress-ng, pid $load) died during run $run: something in the tests killed it"
        exit 1
    fi
done
echo "==> under stress-ng --cpu 2:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
