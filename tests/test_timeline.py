"""The experiment timeline (--chaos-report), drawn by a real browser: headless Chromium from Debian."""

from __future__ import annotations

import html
import html.parser
import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

from pytest_chaos.model import Experiment, ExperimentSpec, Target
from pytest_chaos.timeline import experiment_entry, timeline_data, write_timeline
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


# What a target may print and a test id may hold: each of these once ended the script element holding the data,
# or made the browser read the rest of the page as part of it (blank).
HOSTILE_ID = "test_user.py::test_hostile[<!--<script>]"
HOSTILE_OUTPUT = "before <!--<script> inside </script> after & <b>bold</b> </SCRIPT >"


def hostile_timeline(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """A timeline of a test whose id and target's output are hostile, then a test after it; and its data."""
    experiment = Experiment(ExperimentSpec("helloworld", {"pids": [1]}), outcome="recovered", applied_at=100.0,
                            ended_at=101.0, targets=[Target("pid://1", pid=1, output=HOSTILE_OUTPUT, state="recovered")])
    entries = [(HOSTILE_ID, experiment_entry(experiment))]
    outcomes = {HOSTILE_ID: "passed", "test_user.py::test_after": "failed"}
    path = tmp_path / "timeline.html"
    write_timeline(path, entries, outcomes)
    return path, timeline_data(entries, outcomes)


class ScriptData(html.parser.HTMLParser):
    """The text of ``<script id="data">`` as an HTML parser reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.text: str | None = None
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._inside = tag == "script" and ("id", "data") in attrs

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.text = (self.text or "") + data

    def handle_endtag(self, tag: str) -> None:
        self._inside = False


def test_hostile_output_and_test_ids_cannot_end_or_hide_the_data_and_come_back_intact(tmp_path):
    path, data = hostile_timeline(tmp_path)
    parser = ScriptData()
    parser.feed(path.read_text())
    parser.close()
    assert parser.text is not None
    # No "<" at all: neither "</script" nor "<!--" nor "<script", so the browser reads it as plain script data.
    assert "<" not in parser.text and ">" not in parser.text
    assert json.loads(parser.text) == data
    assert HOSTILE_OUTPUT in data["tests"][0]["experiments"][0]["targets"][0]["output"]


def test_the_browser_draws_every_row_and_shows_hostile_output_as_text(tmp_path):
    path, _ = hostile_timeline(tmp_path)
    # Click the bar, as a reader would, so that the details show its target's output.
    clicked = path.read_text().replace("</body>", "<script>document.querySelector('.bar').click()</script></body>")
    path.write_text(clicked)
    dom = chromium("--dump-dom", f"file://{path}")
    assert dom.returncode == 0, dom.stderr
    names = re.findall(r'<div class="name" title="[^"]*">(.*?)</div>', dom.stdout)
    assert names == [html.escape(HOSTILE_ID, quote=False), "test_user.py::test_after"], dom.stdout
    details = re.search(r'<div id="details" style="display: block;">(.*?)</div>', dom.stdout, re.DOTALL)
    assert details is not None, dom.stdout
    assert html.escape(HOSTILE_OUTPUT, quote=False) in details.group(1)
    assert "<b>" not in dom.stdout.split('id="rows"', 1)[1]  # drawn as text, never as HTML
    assert "CONSOLE" not in dom.stderr, dom.stderr
