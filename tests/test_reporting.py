"""Report sections and JUnit properties: a target's words shown, its control characters made visible."""

from __future__ import annotations

import unicodedata

import pytest

from pytest_chaos.model import Experiment, ExperimentSpec, Target
from pytest_chaos.reporting import experiment_text, junit_properties, visible

# Clear the screen, turn red, bell, move to the line's start and overwrite it, C1's one-byte CSI, a NUL, DEL.
HOSTILE = "ok\tfine\n\x1b[2J\x1b[31mred\x07\rhidden\x9b0m\x00\x7f end\r\n"
SHOWN = "ok\tfine\n\\x1b[2J\\x1b[31mred\\x07\\x0dhidden\\x9b0m\\x00\\x7f end\n"


def controls(text: str) -> set[str]:
    """The control characters in ``text`` other than newline and tab."""
    return {c for c in text if unicodedata.category(c) == "Cc"} - {"\n", "\t"}


def hostile_experiment() -> Experiment:
    target = Target("containerd://web", pid=4242, name="web\x1b]0;title\x07", output=HOSTILE, state="applied")
    return Experiment(ExperimentSpec("helloworld", {"containers": ["web"]}), targets=[target], outcome="applied",
                      detail="the daemon said \x1b[1mbold\x1b[0m")


@pytest.mark.parametrize("text, shown", [
    (HOSTILE, SHOWN),
    ("plain text, tabs\tand lines\n", "plain text, tabs\tand lines\n"),
    ("über ✓ 日本\n", "über ✓ 日本\n"),  # only controls change, never other text
])
def test_visible_shows_control_characters_as_escapes_and_keeps_the_rest(text, shown):
    assert visible(text) == shown


def test_the_report_section_shows_a_targets_control_characters_as_escapes():
    experiment = hostile_experiment()
    text = experiment_text(experiment)
    assert controls(text) == set()
    assert "\\x1b[2J\\x1b[31mred\\x07\\x0dhidden" in text  # the output, visibly
    assert "web\\x1b]0;title\\x07 (containerd://web, host pid 4242)" in text  # the target's name
    assert "(the daemon said \\x1b[1mbold\\x1b[0m)" in text  # and the daemon's detail in the summary
    assert experiment.targets[0].output == HOSTILE  # kept raw for the test


def test_the_junit_properties_show_a_targets_control_characters_as_escapes():
    experiment = hostile_experiment()
    properties = junit_properties(1, experiment)
    assert [name for name, _ in properties] == ["chaos[1]", "chaos[1] containerd://web"]
    assert all(controls(name) == controls(value) == set() for name, value in properties)
    assert properties[1][1] == SHOWN
    assert "\\x1b[1mbold" in properties[0][1]
    assert experiment.targets[0].output == HOSTILE
