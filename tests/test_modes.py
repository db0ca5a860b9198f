"""Chaos Mesh's selection modes, as pure functions over candidate lists."""

from __future__ import annotations

import math
import random

import pytest

from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.modes import check_mode, choose

CANDIDATES = list(range(10))


def pick(mode, value=None, seed=1, candidates=CANDIDATES):
    return choose(candidates, mode, check_mode(mode, value), random.Random(seed))


def test_all_selects_every_candidate():
    assert pick("all") == CANDIDATES


@pytest.mark.parametrize("seed", range(20))
def test_one_selects_a_single_candidate(seed):
    picked = pick("one", seed=seed)
    assert len(picked) == 1 and picked[0] in CANDIDATES


def test_one_spreads_over_the_candidates():
    assert len({pick("one", seed=s)[0] for s in range(200)}) == len(CANDIDATES)


@pytest.mark.parametrize("value, expected", [(1, 1), (3, 3), ("4", 4), (10, 10), (25, 10)])
def test_fixed_selects_min_of_value_and_count(value, expected):
    picked = pick("fixed", value)
    assert len(picked) == expected and len(set(picked)) == expected


@pytest.mark.parametrize("value, count", [(50, 10), (10, 3), (34, 3), (100, 7), (1, 5), (0.5, 10), ("50", 4)])
def test_fixed_percent_rounds_up(value, count):
    candidates = list(range(count))
    assert len(pick("fixed-percent", value, candidates=candidates)) == math.ceil(count * float(value) / 100)


def test_random_max_percent_stays_within_the_bound_and_may_select_none():
    sizes = {len(pick("random-max-percent", 30, seed=s)) for s in range(300)}
    assert sizes == {0, 1, 2, 3}  # ceil(10 * p / 100) for p in [0, 30]


def test_random_max_percent_zero_selects_none():
    assert pick("random-max-percent", 0) == []


def test_same_seed_same_pick():
    assert pick("fixed", 4, seed=99) == pick("fixed", 4, seed=99)
    assert {tuple(pick("fixed", 4, seed=s)) for s in range(30)} != {tuple(pick("fixed", 4, seed=99))}


def test_picks_keep_candidate_order():
    picked = pick("fixed", 5, seed=3)
    assert picked == sorted(picked)


def test_empty_candidates_select_nothing():
    for mode, value in [("one", None), ("all", None), ("fixed", 2), ("fixed-percent", 50)]:
        assert pick(mode, value, candidates=[]) == []


@pytest.mark.parametrize(
    "mode, value",
    [("nope", None), ("one", 1), ("all", "2"), ("fixed", None), ("fixed", 0), ("fixed", -1), ("fixed", 1.5),
     ("fixed", True), ("fixed", 2**63), ("fixed", 10**400), ("fixed", "9" * 400),
     ("fixed-percent", 0), ("fixed-percent", 101), ("fixed-percent", "x"),
     ("random-max-percent", -1), ("random-max-percent", 100.5), ("random-max-percent", float("nan"))],
)
def test_bad_mode_or_value_names_the_field(mode, value):
    with pytest.raises(ChaosSpecError) as info:
        check_mode(mode, value)
    assert info.value.field == ("mode" if mode == "nope" else "value")
