#!/usr/bin/env bash
# Sets up a Debian 12 machine, as root, for pytest-chaos and its tests:
# Debian packages, the Python package, crictl, running containerd and Docker
# Engine daemons, the VM lane's image (pytest-chaos-cluster vm build), and a
# three-node kind cluster (pytest-chaos-cluster up)
# with the chaos daemon deployed and the tutorial's busybox workload.
# Idempotent: run it again at any time.
#
#   scripts/setup.sh               # everything (a first run builds Kubernetes, kind and CoreDNS: ~9 min on 2 cores,
#                                  # and the VM lane's image: ~3 min)
#   scripts/setup.sh --no-cluster  # the local backend only
#   scripts/setup.sh --no-vm       # without the VM lane's image (scripts/vm-lane.sh builds it when missing)
#   SKIP_APT=1 scripts/setup.sh    # Debian packages already installed
set -euo pipefail

WITH_CLUSTER=1
WITH_VM=1
for arg in "$@"; do
    case $arg in
        --no-cluster) WITH_CLUSTER= ;;
        --no-vm) WITH_VM= ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
LOG_DIR=/var/log/pytest-chaos
CRICTL_VERSION=v1.34.0
GRPCURL_VERSION=v1.9.4
GRPC_HEALTH_PROBE_VERSION=v0.4.62
ACTIONLINT_VERSION=v1.7.12
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
        containernetworking-plugins iproute2 openssl mmdebstrap ca-certificates gcc libc6-dev stress-ng chromium \
        qemu-system-x86 e2fsprogs >/dev/null
fi

if ! command -v go >/dev/null; then
    echo "setup.sh: needs Go 1.24 or newer on PATH (to build crictl and Kubernetes from the Go module proxy); Debian 12's golang-go is too old" >&2
    exit 1
fi

step "Python package (editable, with test extras)"
# Two distributions: the plugin (this directory) and the daemon (daemon/), both editable.
python3 -m pip install -q --disable-pip-version-check -e '.[dev,kubernetes]' -e ./daemon
# The test cluster tool is a distribution of its own (cluster/): installed after, so an older pytest-chaos that
# still shipped its console script cannot take the script away when pip replaces it.
python3 -m pip install -q --disable-pip-version-check -e ./cluster
step "the daemon's confine helper (static C, built once per source version)"
python3 -m pytest_chaos_daemon.confinement.confine

if ! command -v crictl >/dev/null; then
    step "crictl $CRICTL_VERSION from the Go module proxy (tests create CRI containers with it)"
    GOBIN=/usr/local/bin go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi

if ! command -v grpcurl >/dev/null; then
    step "grpcurl $GRPCURL_VERSION from the Go module proxy (README's examples of talking to a daemon)"
    GOBIN=/usr/local/bin go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi

if ! command -v grpc-health-probe >/dev/null; then
    step "grpc-health-probe $GRPC_HEALTH_PROBE_VERSION from the Go module proxy (README's health examples)"
    GOBIN=/usr/local/bin go install "github.com/grpc-ecosystem/grpc-health-probe@$GRPC_HEALTH_PROBE_VERSION"
fi

step "the docs site's tools (mkdocs, Material for MkDocs: the docs extra, pinned)"
python3 -m pip install -q --disable-pip-version-check -e '.[docs]'

if [[ $(actionlint -version 2>/dev/null | head -n 1) != "$ACTIONLINT_VERSION" ]]; then
    step "actionlint $ACTIONLINT_VERSION from the Go module proxy (checks docs/ci/github-actions.yml)"
    GOBIN=/usr/local/bin go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
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

# Docker 20.10 gives a --privileged container (a kind node) every capability the kernel knows; where this
# machine's bounding set lacks some, runc refuses, so dockerd runs them through runc-bounded-caps.
dockerd_args=(--containerd=/run/containerd/containerd.sock --bridge=none --iptables=false)
if [[ $(awk '/^CapBnd:/ {print $2}' /proc/self/status) != $(printf '%016x' $(( (1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1 ))) ]]; then
    bounded_runc=$(python3 -m pytest_chaos_cluster docker-runtime)
    dockerd_args+=(--add-runtime "bounded-runc=$bounded_runc" --default-runtime bounded-runc)
    if docker version >/dev/null 2>&1 && [[ $(docker info --format '{{.DefaultRuntime}}') != bounded-runc ]]; then
        step "restarting dockerd with the runtime bounded-runc (this machine lacks capabilities)"
        pkill -x dockerd
        wait_for 60 "dockerd to stop" sh -c '! pgrep -x dockerd'
    fi
fi
if ! docker version >/dev/null 2>&1; then
    step "starting dockerd on the system containerd, off the host network (log: $LOG_DIR/dockerd.log)"
    nohup dockerd "${dockerd_args[@]}" >"$LOG_DIR/dockerd.log" 2>&1 &
    wait_for 60 dockerd docker version
fi

if [[ -n $WITH_VM ]]; then
    step "the VM lane's image: Debian 12's stock kernel, containerd 2.x from the Go module proxy (cached)"
    python3 -m pytest_chaos_cluster vm build
fi

if [[ -n $WITH_CLUSTER ]]; then
    step "Kubernetes: the kind bed (one control plane, two workers; builds kind and its images on its first run)"
    kubeconfig=$(python3 -m pytest_chaos_cluster up | tail -n 1)
    bin_dir=$(python3 -c 'from pytest_chaos_cluster.settings import Layout; print(Layout().k8s_bin)')
    for tool in kubectl kind; do
        if ! command -v "$tool" >/dev/null; then
            case $tool in
                kubectl) ln -sf "$bin_dir/kubectl" /usr/local/bin/kubectl ;;
                kind) ln -sf "$(python3 -c 'from pytest_chaos_cluster.kind.images import kind_binary
from pytest_chaos_cluster.settings import Layout; print(kind_binary(Layout()))')" /usr/local/bin/kind ;;
            esac
        fi
    done
    if [[ ! -e ~/.kube/config || -L ~/.kube/config ]]; then
        mkdir -p ~/.kube && ln -sfn "$kubeconfig" ~/.kube/config
    elif [[ $(readlink -f ~/.kube/config) != "$(readlink -f "$kubeconfig")" ]]; then
        echo "note: ~/.kube/config is not this cluster's; use --chaos-kubeconfig=$kubeconfig"
    fi

    step "the chaos daemon (mutual TLS; certificates in daemon/deploy/certs) and the tutorial's workload, as the README's kind section does"
    export KUBECONFIG=$kubeconfig
    new_certs=
    if [[ ! -e daemon/deploy/certs/ca.crt ]]; then
        pytest-chaos-daemon-certs --out daemon/deploy/certs >/dev/null
        new_certs=1
    fi
    kubectl apply -k daemon/deploy
    # A daemon reads its certificate at start: new certificates need new pods.
    [[ -z $new_certs ]] || kubectl -n chaos-testing rollout restart daemonset/chaos-daemon
    kubectl apply -f example_tests/kubernetes/manifests/busybox.yaml
    kubectl -n chaos-testing rollout status daemonset/chaos-daemon --timeout=180s
    kubectl -n busybox rollout status statefulset/busybox --timeout=180s
    echo "kubeconfig: $kubeconfig    delete the cluster: python3 -m pytest_chaos_cluster down"
fi

step "ready: containerd $(ctr version 2>/dev/null | awk '/Version/{print $2; exit}'), Docker $(docker version --format '{{.Server.Version}}')"
