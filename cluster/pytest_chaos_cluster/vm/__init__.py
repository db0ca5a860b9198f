"""The VM test bed: Debian 12's stock kernel under qemu, for what this host cannot show.

This host is cgroup v1 hybrid without netem; users' CI hosts are cgroup v2 only, with netem,
and run containerd 2.x (DESIGN.md section 7). The VM gives the project's tests such a kernel:
Debian bookworm's ``linux-image-amd64``, cgroup v2 only, every module loadable, containerd
2.x from the Go module proxy with Debian's runc, and a Python venv with the project's
dependencies. It has no network to the outside (``-nic none``) and runs under TCG, with one
vCPU (two hung once in a guest soft lockup).

* image.py: ``build(layout, repo) -> Image``: the root disk, kernel and initrd, cached by digest;
* machine.py: ``run(image, argv, share=..., timeout=...) -> int``: boot, run one command as
  root, stream the console, power off; the command's exit status is returned;
* guest_init.sh: the guest's PID 1 (mounts, loopback, containerd, the command).

Guest paths: the share at ``GUEST_SHARE``, the venv at ``GUEST_VENV`` (its ``bin`` first on
PATH), containerd's socket at ``CONTAINERD_SOCKET``. A lane runs tests in it like this::

    image = vm.build(Layout(), repo)          # seconds when cached
    status = vm.run(image, ["sh", "-c", "pip install --no-deps --no-index wheels/*.whl"
                            " && python -m pytest --junitxml=junit.xml tests"],
                    share=share_dir, timeout=1500)   # share_dir/junit.xml comes back

``run`` returns the command's exit status and raises ``VMError`` (a ClusterError) when the VM
itself failed; ``python -m pytest_chaos_cluster vm run`` exits ``VM_FAILED`` (125) then.
"""

from .image import CONTAINERD_SOCKET, CONTAINERD_VERSION, GUEST_SHARE, GUEST_VENV, Image, build, cached
from .machine import VM_FAILED, VMError, run

__all__ = ["CONTAINERD_SOCKET", "CONTAINERD_VERSION", "GUEST_SHARE", "GUEST_VENV", "Image", "VM_FAILED", "VMError", "build",
           "cached", "run"]
