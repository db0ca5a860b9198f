#!/bin/sh
# PID 1 of the pytest-chaos VM (vm/machine.py boots it; image.py installs it with @...@ filled in).
#
# No systemd: this sets up what the tests expect of a cgroup v2 host (mounts, loopback, containerd),
# runs the one command the host passed in through fw_cfg, reports its exit status on the console
# with the run's nonce (from the kernel command line, so the command's own output cannot fake it)
# and powers off. Lines starting with "PYTEST-CHAOS-VM <nonce>" are for the host.

VENV=@GUEST_VENV@
SHARE=@GUEST_SHARE@
export PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 TERM=dumb  # a serial log, not a terminal
NONCE=unknown

say() { echo "PYTEST-CHAOS-VM $NONCE $*"; }
off() {  # qemu exits on power-off (and, with -no-reboot and panic=-1, on init's exit too)
    sync
    busybox poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
    exit 1
}
fail() { say "setup-failed $*"; off; }
mnt() {  # mnt TYPE DIR [OPTIONS]: mount unless something is there already
    mountpoint -q "$2" && return 0
    mkdir -p "$2" && mount -t "$1" ${3:+-o "$3"} "$1" "$2"
}

# The initramfs moved /dev, /proc, /sys and /run here; mount whatever it did not.
mnt proc /proc nosuid,nodev,noexec
mnt sysfs /sys nosuid,nodev,noexec
mnt devtmpfs /dev nosuid,mode=0755
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pytest_chaos.nonce=*) NONCE=${arg#*=} ;;
        pytest_chaos.share=*) SHARE_TAG=${arg#*=} ;;
    esac
done
say init
mount -o remount,rw / || fail "remounting / read-write"
mnt devpts /dev/pts nosuid,noexec,gid=5,mode=620,ptmxmode=666
mnt tmpfs /dev/shm nosuid,nodev,mode=1777
mnt mqueue /dev/mqueue nosuid,nodev,noexec
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mnt tmpfs /run nosuid,nodev,mode=0755
mnt tmpfs /tmp nosuid,nodev,mode=1777
# cgroup v2 only, mounted as systemd mounts it on users' hosts.
mnt cgroup2 /sys/fs/cgroup nosuid,nodev,noexec,nsdelegate,memory_recursiveprot || fail "mounting cgroup2"
hostname pytest-chaos-vm
ip link set lo up || fail "bringing lo up"
modprobe virtio_rng 2>/dev/null  # entropy for the guest's getrandom(), from the host

modprobe qemu_fw_cfg || fail "modprobe qemu_fw_cfg"
mkdir -p /run/pytest-chaos
cat /sys/firmware/qemu_fw_cfg/by_name/opt/pytest-chaos/command/raw >/run/pytest-chaos/command.sh \
    || fail "reading the command from fw_cfg"
WORKDIR=/root
if [ -n "${SHARE_TAG:-}" ]; then
    modprobe 9pnet_virtio && modprobe 9p || fail "modprobe 9p"
    mkdir -p "$SHARE"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$SHARE_TAG" "$SHARE" || fail "mounting the share"
    WORKDIR=$SHARE
fi

# containerd 2.x with its default configuration: runc, cgroupfs driver, /run/containerd/containerd.sock.
mkdir -p /var/log
containerd >/var/log/containerd.log 2>&1 &
i=0
until ctr version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 240 ]; then
        tail -n 30 /var/log/containerd.log
        fail "containerd did not answer within 120 s (log above)"
    fi
    sleep 0.5
done

say start
(cd "$WORKDIR" && exec sh /run/pytest-chaos/command.sh) </dev/null
say "exit $?"
off
