#!/usr/bin/env bash
# The floor lane: the plugin's own tests once more, in a venv of its own where every runtime dependency of
# both distributions is pinned to the floor their pyproject.toml declares (protobuf>=X runs with protobuf==X),
# so a floor that is not true fails here. The test-only tools the chosen tests need are installed under the
# same pins as constraints: pip refuses one that would lift a floor.
#
#   scripts/floor-lane.sh              # the lane
#   scripts/floor-lane.sh PYTEST_ARGS  # instead, only these pytest arguments, in the floor venv
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${FLOOR_LANE_VENV:-/var/cache/pytest-chaos/floor-venv}
constraints=$(mktemp /tmp/pytest-chaos-floors.XXXXXX)
trap 'rm -f "$constraints"' EXIT

# name==floor for every ">=" of both distributions' dependencies and the kubernetes extra.
python3 - "$constraints" <<'EOF'
import re, sys, tomllib
pins = {}
for path in ("pyproject.toml", "daemon/pyproject.toml"):
    project = tomllib.load(open(path, "rb"))["project"]
    for dep in project["dependencies"] + project.get("optional-dependencies", {}).get("kubernetes", []):
        if m := re.match(r"([\w.-]+)>=([\d.]+)", dep):
            pins[m.group(1).lower()] = m.group(2)
open(sys.argv[1], "w").write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
EOF
echo "==> the floors: $(tr '\n' ' ' < "$constraints")"

rm -rf "$venv"
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r "$constraints"
# The tests' own tools, as the dev extra pins them where it does, held to the floors above.
"${pip[@]}" -c "$constraints" "$(python3 -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"] if d.startswith("hypothesis")))')" "pytest-html>=4.1"
# Both distributions from this tree, without their dependencies (pinned above), and the test-bed tool
# (no dependencies), whose --version a test checks.
"${pip[@]}" --no-deps -e . -e ./daemon -e ./cluster
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(pytest|pluggy|protobuf|grpcio|grpcio-health-checking|grpcio-reflection|pyyaml|cryptography|google-re2|h11|kubernetes) '
"$venv/bin/python" -m pip check --disable-pip-version-check

if (($#)); then
    exec "$venv/bin/python" -m pytest "$@"
fi
echo "==> the plugin's tests, and the local example suite, on the floors"
"$venv/bin/python" -m pytest -ra tests/test_plugin.py tests/test_manifests.py tests/test_modes.py tests/test_protocol.py \
    tests/test_reporting.py tests/test_embedded.py tests/test_pod_selector.py tests/test_timeline.py tests/test_cli.py \
    tests/test_handshake.py tests/test_unused_plugin.py tests/test_backend_capabilities.py \
    -m "not git_history"  # that test runs a 0.1 daemon from git, whose stubs need the protobuf of its day
"$venv/bin/python" -m pytest -p chaos example_tests/local -rA
