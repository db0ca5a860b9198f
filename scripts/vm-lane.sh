#!/usr/bin/env bash
# The VM lane: a chosen part of the project's tests on a second platform, a VM booting Debian 12's stock
# kernel (cgroup v2 only, netem as a module) with containerd 2.x (python3 -m pytest_chaos_cluster vm --help).
# The project goes in as its two wheels built here (the daemon's with the confine helper) and the tests; the VM has no
# network. scripts/vm-lane-guest.sh runs in the guest; JUnit XML and the benchmark's figures come back in
# the share. Exits non-zero when a test fails or the VM itself fails (no boot, a timeout, a kernel panic).
#
#   scripts/vm-lane.sh                 # the whole lane (about 20 minutes on 2 cores)
#   scripts/vm-lane.sh -- PYTEST_ARGS  # instead, only these pytest arguments, with pod-placed daemons
#   VM_LANE_KEEP=DIR scripts/vm-lane.sh  # keep the share (results, logs) in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    --) shift ;;
    "") ;;
    *) echo "vm-lane.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

share=${VM_LANE_KEEP:-$(mktemp -d /tmp/pytest-chaos-vm-lane.XXXXXX)}
mkdir -p "$share"
[[ -n ${VM_LANE_KEEP:-} ]] || trap 'rm -rf "$share"' EXIT
rm -rf "${share:?}"/*

echo "==> the project's two wheels (the daemon's carries the confine helper), built here"
rm -rf build daemon/build  # setuptools reuses a build/ whatever it holds
python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$share/wheels" . ./daemon >/dev/null
echo "==> the tests (tests/, benchmarks/, conftest.py, pyproject.toml) and the guest's script"
tar -c --exclude=__pycache__ tests benchmarks conftest.py pyproject.toml scripts/vm-lane-guest.sh | tar -x -C "$share"

timeout=${VM_LANE_TIMEOUT:-1800}
echo "==> booting the VM (watchdog: ${timeout}s)"
status=0
python3 -m pytest_chaos_cluster vm run --share "$share" --timeout "$timeout" -- sh scripts/vm-lane-guest.sh "$@" || status=$?
for summary in "$share"/results/*.summary; do
    [[ -e $summary ]] && cat "$summary"
done
exit "$status"
