"""Chaos Mesh's PodSelectorSpec: validation, and the queries and filters it turns into."""

from __future__ import annotations

import pytest

from pytest_chaos.backends.pod_selector import (
    annotations_match,
    check_pod_selector,
    field_selector,
    label_selector,
    phase_matches,
)
from pytest_chaos.errors import ChaosSpecError


def test_labels_and_expressions_combine_into_one_label_selector():
    selector = check_pod_selector({
        "labelSelectors": {"app": "web", "tier": "front"},
        "expressionSelectors": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "canary", "operator": "NotIn", "values": ["true"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    })
    assert label_selector(selector) == (
        "app=web,tier=front,env in (prod,staging),canary notin (true),team,!legacy"
    )


def test_field_selectors_join():
    assert field_selector({"fieldSelectors": {"metadata.name": "a", "spec.nodeName": "n1"}}) == (
        "metadata.name=a,spec.nodeName=n1"
    )


@pytest.mark.parametrize(
    "phase, wanted, expected",
    [
        ("Running", [], True),
        ("Running", ["Running"], True),
        ("Pending", ["Running"], False),
        ("Succeeded", ["!Succeeded"], False),
        ("Running", ["!Succeeded"], True),
        ("Pending", ["Running", "Pending", "!Failed"], True),
    ],
)
def test_phase_selector(phase, wanted, expected):
    assert phase_matches(phase, wanted) is expected


def test_annotations_must_all_match():
    assert annotations_match({"a": "1", "b": "2"}, {"a": "1"})
    assert not annotations_match({"a": "1"}, {"a": "1", "b": "2"})
    assert not annotations_match(None, {"a": "1"})
    assert annotations_match(None, {})


@pytest.mark.parametrize(
    "selector, field, words",
    [
        ({"pids": [1]}, "selector.pids", "namespaces, labelSelectors"),
        ({}, "selector", "at least one"),
        ({"namespaces": "busybox"}, "selector.namespaces", "non-empty list"),
        ({"labelSelectors": {"app": 1}}, "selector.labelSelectors", "{str: str}"),
        ({"expressionSelectors": [{"key": "a", "operator": "Maybe"}]}, "selector.expressionSelectors",
         "In, NotIn, Exists, DoesNotExist"),
        ({"expressionSelectors": [{"key": "a", "operator": "In"}]}, "selector.expressionSelectors", "non-empty 'values'"),
        ({"expressionSelectors": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "selector.expressionSelectors",
         "takes no"),
        ({"podPhaseSelectors": ["Sleeping"]}, "selector.podPhaseSelectors", "Pending, Running"),
        ({"pods": ["web-0"]}, "selector.pods", "{namespace: [pod names]}"),
    ],
)
def test_bad_selectors_name_the_field(selector, field, words):
    with pytest.raises(ChaosSpecError) as info:
        check_pod_selector(selector)
    assert info.value.field == field
    assert words in info.value.message
