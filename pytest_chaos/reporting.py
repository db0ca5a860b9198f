"""What experiments put in the test report: terminal sections, JUnit XML properties, pytest-html extras.

JUnit XML with pytest's defaults (junit_logging=no) writes no captured output,
but it always writes a test's ``user_properties``: each target's output goes
there, so the XML holds it whatever the junit settings.
"""

from __future__ import annotations

import html
from typing import Any

from .model import Experiment

SECTION_KEY = "chaos"


def experiment_text(experiment: Experiment) -> str:
    """The summary line, then each target's output under a header naming the target."""
    parts = [experiment.summary()]
    for target in experiment.targets:
        if target.output:
            parts.append(f"--- {target.describe()} ---\n{target.output.rstrip()}")
    return "\n".join(parts) + "\n"


def junit_properties(number: int, experiment: Experiment) -> list[tuple[str, str]]:
    """``chaos[N]`` holds the summary; ``chaos[N] <container id>`` each target's output."""
    properties = [(f"chaos[{number}]", experiment.summary())]
    properties += [(f"chaos[{number}] {t.container_id}", t.output) for t in experiment.targets if t.output]
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
