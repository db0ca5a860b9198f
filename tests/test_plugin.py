"""The plugin end to end, run with pytester against real targets and a real daemon."""

from __future__ import annotations

import html
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_chaos.api.version import VERSION
from tests.support.suites import collect_suite, run_suite
from tests.support.targets import wait_for

pytestmark = pytest.mark.usefixtures("_root_only")



def test_marker_is_documented(pytester):
    result = pytester.runpytest_subprocess("-p", "chaos", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.chaos(kind, *, selector, mode='one'*"])


def test_dash_p_chaos_loads_the_entry_point_even_without_autoload(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "mark.chaos" in pytester.runpytest_subprocess("-p", "chaos", "--markers").stdout.str()
    assert "mark.chaos" not in pytester.runpytest_subprocess("--markers").stdout.str()


def test_help_shows_the_chaos_option_group(pytester):
    result = pytester.runpytest_subprocess("-p", "chaos", "--help")
    result.stdout.fnmatch_lines(["chaos experiments (pytest-chaos):", "*--chaos-daemon=ADDRESS*", "*--chaos-seed=INT*"])
    result.stdout.fnmatch_lines(["*chaos_seed (string):*"])


def test_runtime_options_with_an_external_daemon_are_a_usage_error(pytester, daemon):
    # That daemon lists and resolves containers with its own settings: the plugin's would be ignored.
    result = run_suite(pytester, "def test_app():\n    pass\n", f"--chaos-daemon={daemon.address}",
                 "--chaos-docker-socket=/run/other-docker.sock")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--chaos-docker-socket configure the daemon the plugin starts; with --chaos-daemon=*"
                                 "pytest-chaos-daemon --containerd-socket, --containerd-namespace, --docker-socket*"])


def test_marker_captures_each_targets_process_list(pytester, targets):
    pids = [targets.process("sleep", "1001"), targets.process("sleep", "1002")]
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": {pids}}}, mode="all")
        def test_app(chaos):
            [experiment] = chaos.experiments
            assert experiment.kind == "helloworld"
            by_pid = {{t.pid: t for t in experiment.targets}}
            assert sorted(by_pid) == {sorted(pids)}
            for host_pid, sleep_arg in zip({pids}, ("1001", "1002")):
                target = by_pid[host_pid]
                assert target.container_id == f"pid://{{host_pid}}"
                assert [(p.pid, p.command) for p in target.processes] == [(1, f"sleep {{sleep_arg}}")]
                assert "ps aux" in target.output
                assert target.namespace is None and target.pod is None
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*Captured chaos setup*",
        f"chaos helloworld mode=all: 2 targets [[]pid://{pids[0]}, pid://{pids[1]}[]] applied*",
        "*sleep 1001*",
        "*chaos experiments*",
        "*recovered (one-shot, nothing to recover); mechanism: sh -c 'ps aux' inside the target*",
    ])


def test_pytest_html_rows_carry_each_experiment_as_an_extra(pytester, targets):
    pid = targets.process("sleep", "1003")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}}, mode="all", source="proc")
        def test_app(chaos):
            pass

        def test_plain():
            pass
    """, "--html=report.html", "--self-contained-html")
    result.assert_outcomes(passed=2)
    page = (pytester.path / "report.html").read_text()
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', page).group(1)))
    extras = {test_id: [e for run in runs for e in run.get("extras", [])] for test_id, runs in blob["tests"].items()}
    [marked] = extras["test_user.py::test_app"]
    assert marked["format_type"] == "html"
    assert f"chaos helloworld mode=all: 1 target [pid://{pid}] recovered" in html.unescape(marked["content"])
    assert "sleep 1003" in marked["content"]  # the target's process list, escaped in a <pre>
    assert extras["test_user.py::test_plain"] == []


def test_junit_xml_holds_the_output_with_default_settings(pytester, targets):
    pid = targets.process("sleep", "2002")
    xml = pytester.path / "junit.xml"
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app():
            pass
    """, f"--junitxml={xml}")
    result.assert_outcomes(passed=1)
    properties = {p.get("name"): p.get("value") for p in ET.parse(xml).iter("property")}
    assert "sleep 2002" in properties[f"chaos[1] pid://{pid}"]
    assert properties["chaos[1]"].startswith("chaos helloworld mode=one: 1 target")


def test_a_targets_control_characters_show_as_escapes_in_the_terminal_and_the_junit_xml(pytester, targets):
    """An ANSI sequence in a target's command line, which its /proc listing prints as it is, reaches neither the
    reader's terminal nor the XML raw; ``Target.output`` keeps it for the test."""
    pid = targets.process("sh", "-c", "sleep 3600; :", "\x1b[2J\x1b[31mINJECTED")
    xml = pytester.path / "junit.xml"
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}}, source="proc")
        def test_app(chaos):
            assert "\\x1b[2J\\x1b[31mINJECTED" in chaos.experiments[0].targets[0].output
    """, "-rA", f"--junitxml={xml}", "-o", "junit_logging=all")
    result.assert_outcomes(passed=1)
    terminal = result.stdout.str()
    assert "\x1b" not in terminal
    assert "sleep 3600; : \\x1b[2J\\x1b[31mINJECTED" in terminal
    document = xml.read_text()
    assert "\x1b" not in document and "#x1B" not in document  # not even as pytest escapes what XML cannot hold
    properties = {p.get("name"): p.get("value") for p in ET.parse(xml).iter("property")}
    assert "sleep 3600; : \\x1b[2J\\x1b[31mINJECTED" in properties[f"chaos[1] pid://{pid}"]


def test_failure_report_shows_the_output(pytester, targets):
    pid = targets.process("sleep", "3003")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app():
            assert False, "the app broke"
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Captured chaos setup*", "*sleep 3003*"])


def test_apply_in_the_test_body_recovers_on_exit(pytester, targets):
    pid = targets.process("sleep", "4004")
    result = run_suite(pytester, f"""
        import pytest

        def test_runtime_target(chaos):
            assert chaos.experiments == []
            with chaos.apply("helloworld", selector={{"pids": [{pid}]}}, mode="all") as experiment:
                assert experiment.outcome == "applied"
                assert [p.command for p in experiment.targets[0].processes] == ["sleep 4004"]
            assert experiment.outcome == "recovered"
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Captured chaos call*", "*sleep 4004*"])


def test_several_markers_apply_in_order(pytester, targets):
    first, second = targets.process("sleep", "5001"), targets.process("sleep", "5002")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{first}]}})
        @pytest.mark.chaos("helloworld", selector={{"pids": [{second}]}})
        def test_two(chaos):
            assert [e.targets[0].pid for e in chaos.experiments] == [{first}, {second}]
    """)
    result.assert_outcomes(passed=1)


def test_modes_pick_reproducibly_with_a_seed(pytester, targets):
    pids = [targets.process("sleep", str(6000 + i)) for i in range(5)]
    source = f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": {pids}}}, mode="one")
        @pytest.mark.chaos("helloworld", selector={{"pids": {pids}}}, mode="fixed", value=2)
        @pytest.mark.chaos("helloworld", selector={{"pids": {pids}}}, mode="fixed-percent", value=50)
        @pytest.mark.chaos("helloworld", selector={{"pids": {pids}}}, mode="fixed", value=9)
        def test_modes(chaos):
            counts = [len(e.targets) for e in chaos.experiments]
            assert counts == [1, 2, 3, 5]
            print("PICKED", [[t.pid for t in e.targets] for e in chaos.experiments])
    """
    runs = [run_suite(pytester, source, "--chaos-seed=42", "-s") for _ in range(2)]
    for result in runs:
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["chaos: seed=42 *"])
    picked = [next(line[line.index("PICKED"):] for line in r.outlines if "PICKED" in line) for r in runs]
    assert picked[0] == picked[1]


@pytest.mark.parametrize(
    "marker, field, accepted",
    [
        ('"nosuchkind", selector={"pids": [1]}', "kind", "helloworld"),
        ('"helloworld", selector={"pids": [1]}, mode="some"', "mode", "one, all, fixed, fixed-percent, random-max-percent"),
        ('"helloworld", selector={"pids": [1]}, mode="fixed"', "value", "an integer greater than 0"),
        ('"helloworld", selector={"pids": [1]}, mode="fixed", value=0', "value", "an integer greater than 0"),
        ('"helloworld", selector={"pids": [1]}, mode="fixed-percent", value=150', "value", "(0, 100]"),
        ('"helloworld", selector={"pids": [1]}, mode="random-max-percent", value="x"', "value", "[0, 100]"),
        ('"helloworld", selector={"pids": [1]}, mode="all", value=3', "value", "takes no value"),
        ('"helloworld", selector={"pods": ["x"]}', "selector.pods", "pids, containers, labels"),
        ('"helloworld", selector={"pids": "12"}', "selector.pids", "list of positive integers"),
        ('"helloworld"', "selector", "pids, containers, labels"),
        ('"helloworld", selector={"pids": [1]}, duration="soon"', "duration", "'30s'"),
        ('"helloworld", selector={"pids": [1]}, signal=9', "signal", "takes only 'source'"),
        ('"helloworld", selector={"pids": [1]}, source="shell"', "source", "'ps', 'proc'"),
        ('"helloworld", selector={"pids": [1]}, container_names=["app"]', "container_names", "kubernetes"),
        ('"http-abort", selector={"pids": [1]}, port=80', "target", "one of Request, Response"),
        ('"http-delay", selector={"pids": [1]}, target="Request", port=80', "delay", "'10s'"),
        ('"http-replace", selector={"pids": [1]}, target="Request", port=80, replace={"code": 500}', "replace.code",
         "target Response only"),
        ('"http-patch", selector={"pids": [1]}, target="Request", port=80, patch={"queries": "a=b"}', "patch.queries",
         "name, value*pairs"),
        ('"http-abort", selector={"pids": [1]}, target="Request", port=443, tls={"secretName": "s"}', "tls",
         "HTTPS is not supported"),
        ('"http-abort", selector={"pids": [1]}, target="Request", port=80, side="both"', "side", "server, client"),
    ],
)
def test_bad_marker_is_a_usage_error_at_collection(pytester, marker, field, accepted):
    result = collect_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos({marker})
        def test_bad():
            raise AssertionError("must not run")
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_user.py::test_bad: @pytest.mark.chaos {field}: *{accepted}*"])
    assert "must not run" not in result.stdout.str()


@pytest.mark.needs_root
def test_nothing_selected_errors_the_test(pytester):
    result = run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"labels": {"app": "no-such-app-anywhere"}})
        def test_app():
            pass
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["ChaosError: chaos experiment helloworld mode=one could not be applied: no target is selected*"])


def test_dead_pid_selects_nothing(pytester):
    result = run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"pids": [4194300]})
        def test_app():
            pass
    """)
    result.assert_outcomes(errors=1)


def test_unreachable_daemon_errors_the_test(pytester, targets, tmp_path):
    pid = targets.process("sleep", "7007")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app():
            pass
    """, f"--chaos-daemon=unix://{tmp_path}/nobody.sock")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*chaos daemon unreachable at unix://*nobody.sock*"])


def test_failed_apply_errors_the_test_with_the_daemons_message(pytester, targets, tmp_path):
    rootfs = targets.distroless_rootfs(tmp_path)
    container_id = targets.containerd("/bin/busybox", "sleep", "3600", rootfs=rootfs)
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"containers": ["{container_id}"]}})
        def test_app():
            pass
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*FAILED_PRECONDITION*needs `sh` and `ps`*"])


def test_proc_source_lists_a_distroless_container(pytester, targets, tmp_path):
    rootfs = targets.distroless_rootfs(tmp_path)
    container_id = targets.containerd("/bin/busybox", "sleep", "3600", rootfs=rootfs)
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"containers": ["{container_id}"]}}, source="proc")
        def test_app(chaos):
            [target] = chaos.experiments[0].targets
            assert [(p.pid, p.command) for p in target.processes] == [(1, "/bin/busybox sleep 3600")]
    """)
    result.assert_outcomes(passed=1)


def test_ini_options_mirror_the_command_line(pytester, targets):
    pid = targets.process("sleep", "8008")
    pytester.makeini("[pytest]\nchaos_seed = 777\n")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app():
            pass
    """)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["chaos: seed=777 *"])


def test_labels_select_docker_and_containerd_containers(pytester, targets):
    label = {"app": f"web-{os.getpid()}"}
    in_containerd = targets.containerd("sleep", "9001", labels=label)
    in_docker = targets.docker("sleep", "9002", labels=label)
    targets.docker("sleep", "9003", labels={"app": "other"})
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"labels": {label!r}}}, mode="all")
        def test_app(chaos):
            targets = {{t.container_id: t for t in chaos.experiments[0].targets}}
            assert sorted(targets) == sorted(["containerd://{in_containerd}", "docker://{in_docker}"])
            assert [p.command for p in targets["containerd://{in_containerd}"].processes] == ["sleep 9001"]
            assert [p.command for p in targets["docker://{in_docker}"].processes] == ["sleep 9002"]
    """)
    result.assert_outcomes(passed=1)


def test_embedded_daemon_is_stopped_and_its_socket_removed(pytester, targets):
    pid = targets.process("sleep", "9100")
    result = run_suite(pytester, f"""
        import os, pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            print("SOCKET", chaos.experiments[0].targets[0].daemon)
    """, "-s")
    result.assert_outcomes(passed=1)
    address = next(line[line.index("SOCKET"):] for line in result.outlines if "SOCKET" in line).split()[1]
    path = address.removeprefix("unix://")
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_recovery_runs_when_the_test_fails(pytester, targets):
    pid = targets.process("sleep", "9200")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            assert False
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["test_user.py::test_app: chaos helloworld mode=one: 1 target * recovered*"])


def test_random_max_percent_that_draws_nothing_errors_the_test(pytester, targets):
    pid = targets.process("sleep", "9300")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}}, mode="random-max-percent", value=0)
        def test_app():
            pass
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*picked none of 1 candidates*no target is selected*"])


def test_bad_apply_arguments_raise_naming_the_field(pytester, targets):
    pid = targets.process("sleep", "9400")
    result = run_suite(pytester, f"""
        import pytest
        from pytest_chaos import ChaosSpecError

        def test_app(chaos):
            with pytest.raises(ChaosSpecError) as info:
                with chaos.apply("helloworld", selector={{"pids": [{pid}]}}, mode="fixed", value=-2):
                    pass
            assert info.value.field == "value"
    """)
    result.assert_outcomes(passed=1)


def test_uses_a_running_daemon_given_its_address(pytester, targets, daemon):
    pid = targets.process("sleep", "9500")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            [t] = chaos.experiments[0].targets
            assert t.daemon == "{daemon.address}"
            assert [p.command for p in t.processes] == ["sleep 9500"]
    """, f"--chaos-daemon={daemon.address}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"chaos: seed=* daemon={daemon.address}"])
    assert f"pid://{pid}" in daemon.log()


def test_report_and_junit_say_how_a_fault_that_stayed_ended(pytester, targets):
    pid = targets.process("sleep", "9600")
    xml = pytester.path / "junit.xml"
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            assert chaos.experiments[0].outcome == "applied"
    """, "-rA", f"--junitxml={xml}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Captured chaos setup*", "*container-pause mode=one: 1 target*applied*",
                                 "*Captured chaos teardown*", "*container-pause mode=one: 1 target*recovered*"])
    properties = {p.get("name"): p.get("value") for p in ET.parse(xml).iter("property")}
    # The mechanism, the node's cgroup layout as its daemon reports it, and the daemon's version (the handshake).
    assert re.search(r"recovered; mechanism: SIGSTOP to the process and its descendants \(cgroup v[12]( \(hybrid\))?\); "
                     rf"daemon: pytest-chaos-daemon {re.escape(VERSION)}$", properties["chaos[1]"]), properties["chaos[1]"]
    assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T"


def test_a_recovery_that_fails_errors_the_test_in_teardown_naming_the_target(pytester, targets, start_daemon):
    daemon = start_daemon("--allow-pid-targets")
    pid = targets.process("sleep", "9601")
    result = run_suite(pytester, f"""
        import os, signal, pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            os.kill({daemon.process.pid}, signal.SIGKILL)  # the daemon dies with the fault in force
    """, f"--chaos-daemon={daemon.address}", "--chaos-timeout=5", "--chaos-lease=2")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*ChaosError: recovery failed: pid://{pid}*not recovered*may still be in force*"])
    # What it left is in its journal: the next daemon on that state directory recovers it when its lease ends.
    state_dir = daemon.log_path.rsplit("/", 1)[0] + "/state"
    start_daemon("--allow-pid-targets", "--state-dir", state_dir)
    wait_for(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T", "the process to run again",
             timeout=15)


def test_dry_run_reports_the_targets_injects_nothing_and_skips(pytester, targets):
    pids = [targets.process("sleep", "5101"), targets.process("sleep", "5102")]
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": {pids}}}, mode="one")
        def test_marked(chaos):
            raise AssertionError("must not run")

        def test_in_body(chaos):
            with chaos.apply("container-pause", selector={{"pids": {pids}}}, mode="all"):
                raise AssertionError("must not run")

        @pytest.mark.chaos("container-pause", selector={{"pids": [4194303]}})
        def test_nothing_selected(chaos):
            raise AssertionError("must not run")
    """, "--chaos-dry-run", "-rA")
    result.assert_outcomes(skipped=2, errors=1)
    text = result.stdout.str()
    assert "dry-run (nothing is injected; chaos tests are skipped)" in text
    result.stdout.fnmatch_lines(["*chaos container-pause mode=all: 2 targets*planned (dry run: nothing injected)*",
                                 "SKIPPED*test_user.py:3: chaos dry run, nothing injected: container-pause mode=one -> "
                                 "pid://*"])
    assert "must not run" not in text
    for pid in pids:  # never paused
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "T"
