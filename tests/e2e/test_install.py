"""What a user gets from pip: each wheel installed into a fresh venv (no system packages) from PyPI and the
wheels built here, binaries only (``--only-binary :all:``: nothing is compiled, so no C compiler is used),
then a chaos test run with that venv's pytest.

- The plugin's wheel alone (with its ``kubernetes`` extra) runs the tutorial's test against the kind bed;
  the daemon is not installed there.
- The plugin with its ``local`` extra, which brings the daemon's wheel, runs a local chaos test as root.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from tests.support.wheels import ROOT, fresh_venv

LOCAL_TEST = '''
import subprocess

def test_a_process_is_listed_by_the_daemon_of_the_local_extra(chaos):
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        with chaos.apply("helloworld", selector={"pids": [sleeper.pid]}, mode="all") as experiment:
            [target] = experiment.targets
            assert any(p.command == "sleep 300" for p in target.processes)
    finally:
        sleeper.kill()
'''


def pip_install(python: pathlib.Path, *requirements: str, find_links: pathlib.Path) -> None:
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
                           "--find-links", str(find_links), *requirements],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def imports(python: pathlib.Path, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0


def run_pytest(python: pathlib.Path, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST_ADDOPTS"))}
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_plugins_wheel_alone_runs_a_kubernetes_test(wheels, kube, workloads, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, f"{wheels['pytest_chaos']}[kubernetes]", find_links=wheels["pytest_chaos"].parent)
    assert not imports(python, "pytest_chaos_daemon") and imports(python, "pytest_chaos")
    # The example suite outside the repository, so nothing of the checkout's conftest or path is used.
    suite = tmp_path / "suite"
    shutil.copytree(ROOT / "example_tests" / "kubernetes", suite / "kubernetes")
    shutil.copy(ROOT / "example_tests" / "conftest.py", suite / "conftest.py")
    result = run_pytest(python, suite, "--chaos-backend=kubernetes", f"--chaos-kubeconfig={kube.kubeconfig}",
                        "kubernetes/test_tutorial.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_local_extra_brings_the_daemon_and_runs_a_local_test(wheels, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, f"{wheels['pytest_chaos']}[local]", find_links=wheels["pytest_chaos"].parent)
    assert imports(python, "pytest_chaos_daemon")
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_local.py").write_text(LOCAL_TEST)
    result = run_pytest(python, tmp_path / "suite", "test_local.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "chaos helloworld" in result.stdout
