"""What experiments put in the test report: terminal sections and JUnit XML properties.

JUnit XML with pytest's defaults (junit_logging=no) writes no captured output,
but it always writes a test's ``user_properties``: each target's output goes
there, so the XML holds it whatever the junit settings.
"""

from __future__ import annotations

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
