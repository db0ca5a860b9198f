"""The experiment timeline (--chaos-report), drawn by a real browser: headless Chromium from Debian."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.support.targets import require

SUITE = """
import time
import pytest

@pytest.mark.chaos("container-pause", selector={{"pids": [{paused}]}}, duration="1s")
def test_paused_for_a_second(chaos):
    time.sleep(1.5)

@pytest.mark.chaos("helloworld", selector={{"pids": [{listed}]}}, source="proc")
def test_listed(chaos):
    pass

@pytest.mark.chaos("container-pause", selector={{"pids": [{paused}]}})
def test_fails_while_paused(chaos):
    assert False, "the app did not cope"

def test_without_chaos():
    pass
"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium (Debian's package, for the timeline's browser check)")
    assert binary is not None
    return subprocess.run([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=120)


def test_the_timeline_renders_a_row_per_test_and_a_bar_per_experiment(pytester, targets, tmp_path):
    paused, listed = targets.process("sleep", "5301"), targets.process("sleep", "5302")
    pytester.makepyfile(test_user=SUITE.format(paused=paused, listed=listed))
    report = tmp_path / "timeline.html"
    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-report={report}")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([f"chaos: experiment timeline written to {report}"])
    page = report.read_text()
    assert "<script" not in page.split('id="data"', 1)[1].split("</script>", 1)[0].lower()  # data stays data

    dom = chromium("--dump-dom", f"file://{report}")
    assert dom.returncode == 0, dom.stderr
    rows = re.findall(r'<div class="row test">(.*?)</div></div>', dom.stdout)
    assert len(rows) == 4, dom.stdout
    bars = re.findall(r'<div class="bar (\w+)" title="[^"]*" style="left: ([\d.e-]+)%; width: ([\d.e-]+)%;">'
                      r'([\w-]+)</div>', dom.stdout)
    assert sorted((outcome, kind) for outcome, _, _, kind in bars) == [
        ("expired", "container-pause"), ("recovered", "container-pause"), ("recovered", "helloworld")]
    widths = {kind + ":" + outcome: float(width) for outcome, _, width, kind in bars}
    # The paused second is the widest bar: the run is about 1.6 s, the one-shot listing has no length.
    assert widths["container-pause:expired"] > 40 and widths["helloworld:recovered"] < 5
    assert 'class="outcome failed">failed<' in dom.stdout and 'class="outcome passed">passed<' in dom.stdout
    # No console message at all: no script error, nothing logged.
    assert "CONSOLE" not in dom.stderr, dom.stderr

    screenshot = tmp_path / "timeline.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1200,400", f"file://{report}")
    assert shot.returncode == 0 and screenshot.stat().st_size > 5000, shot.stderr
    print(f"\ntimeline screenshot: {screenshot}")
