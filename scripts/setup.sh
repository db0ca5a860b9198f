#!/usr/bin/env bash
# Sets up a Debian 12 machine, as root, for pytest-chaos's local backend and
# its tests: Debian packages, the Python package, crictl, and running
# containerd and Docker Engine daemons. Idempotent: run it again at any time.
#
#   scripts/setup.sh            # everything
#   SKIP_APT=1 scripts/setup.sh # packages already installed
set -euo pipefail

cd "$(dirname "$0")/.."
LOG_DIR=/var/log/pytest-chaos
CRICTL_VERSION=v1.34.0
mkdir -p "$LOG_DIR"
export PATH="$PATH:/usr/local/go/bin"

step() { printf '\n==> %s\n' "$*"; }

if [[ $(id -u) != 0 ]]; then
    echo "setup.sh: run as root (it installs packages and starts containerd and dockerd)" >&2
    exit 1
fi

if [[ -z ${SKIP_APT:-} ]]; then
    step "Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        containerd runc docker.io busybox-static util-linux procps iptables \
        containernetworking-plugins mmdebstrap ca-certificates >/dev/null
fi

step "Python package (editable, with test extras)"
python3 -m pip install -q --disable-pip-version-check -e '.[dev,kubernetes]'

if ! command -v crictl >/dev/null; then
    step "crictl $CRICTL_VERSION from the Go module proxy (tests create CRI containers with it)"
    GOBIN=/usr/local/bin go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "setup.sh: $what did not come up; see $LOG_DIR" >&2
            return 1
        fi
        sleep 0.5
    done
}

if ! ctr version >/dev/null 2>&1; then
    step "starting containerd (log: $LOG_DIR/containerd.log)"
    nohup containerd --config scripts/containerd.toml >"$LOG_DIR/containerd.log" 2>&1 &
    wait_for 30 containerd ctr version
fi

if ! docker version >/dev/null 2>&1; then
    step "starting dockerd on the system containerd, off the host network (log: $LOG_DIR/dockerd.log)"
    nohup dockerd --containerd=/run/containerd/containerd.sock --bridge=none --iptables=false \
        >"$LOG_DIR/dockerd.log" 2>&1 &
    wait_for 60 dockerd docker version
fi

step "ready: containerd $(ctr version 2>/dev/null | awk '/Version/{print $2; exit}'), Docker $(docker version --format '{{.Server.Version}}')"
