#!/usr/bin/env bash
# The fast tier: the tests that need no root (pure modules: modes, selectors, specs, manifests, the timeline,
# the DNS and packet codecs, collection-time errors), run as an ordinary user. As root, this script sets up a venv
# any user can read (Debian's python3, not root's own) and runs the tier as `nobody`, which proves it needs no
# privilege; as anyone else, it runs the tier as that user.
#
#   scripts/fast-tier.sh              # the tier
#   scripts/fast-tier.sh PYTEST_ARGS  # extra pytest arguments (e.g. -x, -k manifest)
#
# A contributor without root can also run it from their own environment: python3 -m pytest -m "not needs_root"
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1  # the tree may not be the user's to write

run_tier() {
    "$1" -m pytest -m "not needs_root" -p no:cacheprovider -q -ra "${@:2}"
}

if [[ $(id -u) != 0 ]]; then
    run_tier python3 "$@"
    exit
fi

venv=${FAST_TIER_VENV:-/var/cache/pytest-chaos/fast-tier-venv}
# What the venv was made from: the editable installs point into this checkout, so its path is part of it
# (a venv made from another checkout imports that one, or nothing).
stamp=$( (pwd; cat pyproject.toml daemon/pyproject.toml "$0") | sha256sum)
if [[ ! -x $venv/bin/python ]] || [[ $(cat "$venv/stamp" 2>/dev/null) != "$stamp" ]] \
    || ! (cd / && "$venv/bin/python" -c 'import pytest_chaos, pytest_chaos_daemon, pytest_chaos_cluster') 2>/dev/null; then
    echo "==> the fast tier's venv: $venv (Debian's python3, readable by any user)"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,kubernetes,docs]' -e ./daemon -e ./cluster
    echo "$stamp" > "$venv/stamp"
fi
chmod -R a+rX "$venv"
home=$(mktemp -d /tmp/fast-tier-home.XXXXXX)  # no "chaos" in it: tests look for that word in output
chown nobody "$home"
trap 'rm -rf "$home"' EXIT
echo "==> the fast tier, as nobody: pytest -m 'not needs_root'"
setpriv --reuid nobody --regid nogroup --clear-groups env HOME="$home" TMPDIR="$home" PATH="$venv/bin:$PATH" \
    bash -c "$(declare -f run_tier); run_tier \"\$@\"" fast-tier "$venv/bin/python" "$@"
