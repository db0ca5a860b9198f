"""What experiments put in the test report: terminal sections, JUnit XML properties, pytest-html extras.

JUnit XML with pytest's defaults (junit_logging=no) writes no captured output,
but it always writes a test's ``user_properties``: each target's output goes
there, so the XML holds it whatever the junit settings.

A target's output, a container's name and the daemon's details are the
target's words, not ours: in the terminal sections and the JUnit XML their
control characters show as escapes (``visible``). ``Target.output`` keeps
them, for a test to assert on.
"""

from __future__ import annotations

import html
import re
from typing import Any

from .model import Experiment

SECTION_KEY = "chaos"
# C0 and C1 controls and DEL, but newline and tab: raw, an ANSI sequence a target printed would move, recolour or
# clear the reader's terminal, or hide lines of a CI log.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with its control characters other than newline and tab as escapes: ESC shows as ``\\x1b``, a
    carriage return as ``\\x0d`` (except in a line ending ``\\r\\n``, which becomes ``\\n``)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text.replace("\r\n", "\n"))


def summary_text(experiment: Experiment) -> str:
    """The experiment's summary line, for a report."""
    return visible(experiment.summary())


def experiment_text(experiment: Experiment) -> str:
    """The summary line, then each target's output under a header naming the target."""
    parts = [experiment.summary()]
    for target in experiment.targets:
        if target.output:
            parts.append(f"--- {target.describe()} ---\n{target.output.rstrip()}")
    return visible("\n".join(parts) + "\n")


def junit_properties(number: int, experiment: Experiment) -> list[tuple[str, str]]:
    """``chaos[N]`` holds the summary; ``chaos[N] <container id>`` each target's output."""
    properties = [(f"chaos[{number}]", summary_text(experiment))]
    properties += [(visible(f"chaos[{number}] {t.container_id}"), visible(t.output))
                   for t in experiment.targets if t.output]
    return properties


def html_extras(experiments: list[Experiment]) -> list[dict[str, Any]]:
    """pytest-html's extras for a test's row: per experiment, its summary and each target's output, escaped."""
    from pytest_html import extras  # only with pytest-html installed and active

    blocks = []
    for experiment in experiments:
        parts = [f"<p class=\"chaos-summary\">{html.escape(experiment.summary())}</p>"]
        parts += [f"<p>{html.escape(t.describe())}</p><pre class=\"chaos-output\">{html.escape(t.output.rstrip())}</pre>"
                  for t in experiment.targets if t.output]
        blocks.append(extras.html(f"<div class=\"chaos-experiment\">{''.join(parts)}</div>"))
    return blocks
