"""pytest-xdist: one seed for every worker's picks, and the controller's summary of every worker's experiments."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.targets import wait_for

SUITE = """
import pytest

PIDS = {pids!r}

@pytest.mark.chaos("container-pause", selector={{"pids": PIDS}}, mode="one")
def test_one(chaos):
    assert chaos.experiments[0].outcome == "applied"

@pytest.mark.chaos("container-pause", selector={{"pids": PIDS}}, mode="fixed", value=2)
def test_two(chaos):
    assert chaos.experiments[0].outcome == "applied"

@pytest.mark.chaos("helloworld", selector={{"pids": PIDS}}, mode="one", source="proc")
def test_three(chaos):
    pass
"""


def picks(output: str) -> dict[str, str]:
    """Test id -> the summary line's targets, from the "chaos experiments" section."""
    found = re.findall(r"^(test_user\.py::\w+): chaos [\w-]+ mode=\S+: \d+ targets? (\[[^\]]*\]) recovered", output,
                       re.MULTILINE)
    return dict(found)


def test_two_workers_share_the_controllers_seed_and_the_summary_lists_every_experiment(pytester, targets):
    pids = [targets.process("sleep", f"49{n:02d}") for n in range(5)]
    pytester.makepyfile(test_user=SUITE.format(pids=pids))
    parallel = pytester.runpytest_subprocess("-p", "chaos", "-n", "2")
    parallel.assert_outcomes(passed=3)
    text = parallel.stdout.str()
    [seed] = re.findall(r"^chaos: seed=(\d+) ", text, re.MULTILINE)  # printed once, by the controller
    across_workers = picks(text)
    assert set(across_workers) == {"test_user.py::test_one", "test_user.py::test_two", "test_user.py::test_three"}
    serial = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-seed={seed}")
    serial.assert_outcomes(passed=3)
    assert picks(serial.stdout.str()) == across_workers
    for pid in pids:  # nothing stays paused
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "T"


def page_data(path) -> dict:
    """The timeline page's data, as its script reads it."""
    text = path.read_text()
    start = text.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)])


def test_the_controllers_timeline_has_every_workers_experiments(pytester, targets):
    pids = [targets.process("sleep", f"48{n:02d}") for n in range(3)]
    pytester.makepyfile(test_user=SUITE.format(pids=pids))
    result = pytester.runpytest_subprocess("-p", "chaos", "-n", "2", "--chaos-report=timeline.html")
    result.assert_outcomes(passed=3)
    data = page_data(pytester.path / "timeline.html")
    bars = {test["id"]: [(e["kind"], e["outcome"], len(e["targets"])) for e in test["experiments"]]
            for test in data["tests"]}
    assert bars == {
        "test_user.py::test_one": [("container-pause", "recovered", 1)],
        "test_user.py::test_two": [("container-pause", "recovered", 2)],
        "test_user.py::test_three": [("helloworld", "recovered", 1)],
    }
    assert {test["outcome"] for test in data["tests"]} == {"passed"}
    assert data["start"] < data["end"]  # the time axis spans the workers' experiments


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_chaos_test_that_times_out_leaves_no_fault_behind(pytester, targets, method):
    pid = targets.process("sleep", "4990")
    pytester.makepyfile(test_user=f"""
        import time
        import pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": [{pid}]}})
        def test_slow(chaos):
            time.sleep(60)
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", "--timeout=2", f"--timeout-method={method}")
    assert result.ret != 0
    # signal: teardown recovers it; thread: the process exits at once, and its embedded daemon recovers it.
    wait_for(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T",
             "the paused target to run again", 10)
