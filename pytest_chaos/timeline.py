"""The experiment timeline: one self-contained HTML file (``--chaos-report=PATH``).

One row per test, with its outcome, and one bar per experiment from when it
was applied to when it ended (recovered, expired or failed), on a time axis
shared by the whole run; a click on a bar shows its targets, how each ended,
and what the daemon printed for it. The data goes in as JSON and the page's
script draws it with ``textContent`` only: a target's output is never HTML.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .model import Experiment

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .axis { color: #666; font-size: 12px; margin: 0 0 .5em 25em; }
.row { display: flex; align-items: center; border-top: 1px solid #eee; min-height: 2em; }
.name { width: 20em; padding-right: 1em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.outcome { width: 5em; font-weight: bold; } .passed { color: #2a7d2a; } .failed, .error { color: #b22; }
.skipped { color: #888; } .lane { position: relative; flex: 1; height: 1.6em; background: #fafafa; }
.bar { position: absolute; top: .25em; height: 1.1em; min-width: 3px; border-radius: 3px; cursor: pointer;
       font-size: 11px; color: #fff; overflow: hidden; white-space: nowrap; padding: 0 3px; box-sizing: border-box; }
.bar.recovered { background: #3b7dd8; } .bar.expired { background: #8a5cd1; } .bar.failed { background: #c33; }
.bar.applied { background: #d98a1b; } .bar.planned, .bar.pending { background: #999; }
#details { margin-top: 1.5em; white-space: pre-wrap; font: 12px ui-monospace, monospace; background: #f4f4f4;
           padding: 1em; display: none; }
</style></head>
<body>
<h1>%(title)s</h1>
<div class="axis" id="axis"></div>
<div id="rows"></div>
<div id="details"></div>
<script id="data" type="application/json">%(data)s</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const span = Math.max(data.end - data.start, 0.001);
document.getElementById("axis").textContent = "0 s" + " ".repeat(8) + "run time: " + span.toFixed(2) + " s";
const rows = document.getElementById("rows"), details = document.getElementById("details");
function element(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
for (const test of data.tests) {
  const row = element("div", "row test");
  row.appendChild(element("div", "name", test.id)).title = test.id;
  row.appendChild(element("div", "outcome " + test.outcome, test.outcome));
  const lane = row.appendChild(element("div", "lane"));
  for (const experiment of test.experiments) {
    const begin = experiment.applied_at ?? experiment.ended_at ?? data.start;
    const end = experiment.ended_at ?? data.end;
    const bar = lane.appendChild(element("div", "bar " + experiment.outcome, experiment.kind));
    bar.style.left = (100 * (begin - data.start) / span) + "%%";
    bar.style.width = (100 * Math.max(end - begin, 0) / span) + "%%";
    bar.title = experiment.summary;
    bar.addEventListener("click", () => {
      details.style.display = "block";
      details.textContent = [experiment.summary, ""].concat(experiment.targets.map(
        t => "--- " + t.target + ": " + t.state + (t.detail ? " (" + t.detail + ")" : "") +
             (t.mechanism ? "\\nmechanism: " + t.mechanism + (t.cgroup ? " (" + t.cgroup + ")" : "") : "") +
             (t.output ? "\\n" + t.output : ""))).join("\\n");
    });
  }
  rows.appendChild(row);
}
</script></body></html>
"""


def experiment_entry(experiment: Experiment) -> dict[str, Any]:
    """One experiment as the page draws it: plain JSON, so it can travel in a pytest-xdist worker's report."""
    return {
        "kind": experiment.kind, "outcome": experiment.outcome, "summary": experiment.summary(),
        "applied_at": experiment.applied_at, "ended_at": experiment.ended_at,
        "targets": [{"target": t.describe(), "state": t.state, "detail": t.detail, "mechanism": t.mechanism,
                     "cgroup": t.cgroup, "output": t.output} for t in experiment.targets],
    }


def timeline_data(entries: Sequence[tuple[str, dict[str, Any]]], outcomes: Mapping[str, str]) -> dict[str, Any]:
    """What the page draws: every test with an outcome or an experiment (``experiment_entry``), in run order."""
    tests: dict[str, dict[str, Any]] = {}
    for test_id in outcomes:
        tests.setdefault(test_id, {"id": test_id, "outcome": outcomes[test_id], "experiments": []})
    times: list[float] = []
    for test_id, entry in entries:
        test = tests.setdefault(test_id, {"id": test_id, "outcome": outcomes.get(test_id, "unknown"),
                                          "experiments": []})
        test["experiments"].append(entry)
        times += [t for t in (entry["applied_at"], entry["ended_at"]) if t is not None]
    start, end = (min(times), max(times)) if times else (0.0, 0.0)
    return {"start": start, "end": end, "tests": list(tests.values())}


# The JSON holds a target's output and test ids, not ours: with no "<" in it, nothing in it can end the script
# element ("</script>") or switch the browser's reading of it ("<!--" then "<script" hides the "</script>" after).
# JSON.parse reads the escapes back as the characters.
JSON_IN_SCRIPT = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def write_timeline(path: str | os.PathLike[str], entries: Sequence[tuple[str, dict[str, Any]]],
                   outcomes: Mapping[str, str], title: str = "pytest-chaos: experiment timeline") -> None:
    data = json.dumps(timeline_data(entries, outcomes)).translate(JSON_IN_SCRIPT)
    with open(path, "w", encoding="utf-8") as f:
        f.write(PAGE % {"title": html.escape(title), "data": data})
