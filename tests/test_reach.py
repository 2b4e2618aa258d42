"""Reach: the default profile draws, for every bundled implementation that claims a feature, the
configurations where that feature's bugs hide (a kv-head mapping right only for groups of 2, a RoPE
pairing that one rotated pair cannot show, a bad-input law that bfloat16 never reaches, ...).

Each class is drawn as a law draws it: from the law's claim (:func:`attnspec.requirements.decide`), with the
number of examples the default profile gives that law in that dtype, under several seeds.
"""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import Phase, given, seed, settings

from attnspec import Capabilities, Reach
from attnspec.checks import LAWS
from attnspec.impls import BUNDLED
from attnspec.profiles import PROFILES
from attnspec.requirements import DEVICE_DTYPES, decide
from attnspec.runner import REPEAT_SHARE
from attnspec.strategies import problems

SEEDS = range(5)


def drawn(scope, dtype, seed_: int) -> list:
    """The problems one law run draws from ``scope`` in ``dtype`` under Hypothesis seed ``seed_``."""
    examples = PROFILES["attnspec"]["max_examples"]
    examples = examples if dtype == torch.float64 else max(1, round(examples * REPEAT_SHARE))
    seen = []

    @seed(seed_)
    @settings(max_examples=examples, database=None, phases=[Phase.generate], deadline=None)
    @given(problems(scope))
    def collect(problem):
        seen.append(problem)

    collect()
    return seen


@dataclass(frozen=True)
class BugClass:
    """Configurations where bugs of one feature hide: drawn by ``law`` wherever ``claims`` holds, in each of
    ``dtypes`` (float64, where the law gets the most examples, unless the class is about the dtype)."""

    name: str
    law: str
    claims: Callable[[Capabilities], bool]
    found: Callable[[object], bool]
    dtypes: tuple = (torch.float64,)


CLASSES = [
    BugClass("groups of more than 2 query heads over several key/value heads", "output_matches_reference",
             lambda c: c.grouping == "any", lambda p: 1 < p.config.kv_heads < p.config.num_heads // 2),
    BugClass("multi-query: one key/value head for several query heads", "output_matches_reference",
             lambda c: c.grouping != "none", lambda p: p.config.kv_heads == 1 < p.config.num_heads),
    BugClass("at least 2 rotated pairs (pairing and base show)", "output_matches_reference",
             lambda c: c.rope is not None, lambda p: p.rope.rotated(p.config.head_dim) >= 4),
    BugClass("fewer queries than keys under the causal flag", "causal_flag_equals_causal_mask",
             lambda c: c.causality != "mask" and c.cross_attention, lambda p: p.is_causal and p.L < p.S),
    BugClass("more queries than keys under the causal flag", "causal_flag_with_more_queries_than_keys",
             lambda c: c.causality != "mask" and c.cross_attention, lambda p: p.is_causal and p.L > p.S),
    BugClass("the causal flag with a mask and dropout in training", "dropout_in_training_masks_weights",
             lambda c: c.causality == "flag" and c.attention_dropout and c.masks_with_causality,
             lambda p: p.is_causal and p.has_mask and p.config.dropout > 0 and p.training),
    BugClass("a sequence of length 1 or 2 in every dtype", "rejects_mismatched_key_value",
             lambda c: True, lambda p: min(p.L, p.S) <= 2, dtypes=DEVICE_DTYPES["cpu"]),
]


def _cases():
    for impl in BUNDLED:
        for bug in CLASSES:
            if bug.claims(impl.capabilities):
                for dtype in bug.dtypes:
                    if decide(LAWS[bug.law], impl.capabilities, "cpu", dtype).claimed:
                        yield pytest.param(impl, bug, dtype, id=f"{impl.name}|{bug.law}|{str(dtype)[6:]}")


@pytest.mark.parametrize("impl, bug, dtype", list(_cases()))
def test_the_default_profile_draws_where_bugs_hide(impl, bug, dtype):
    scope = decide(LAWS[bug.law], impl.capabilities, "cpu", dtype).scope
    missed = [s for s in SEEDS if not any(bug.found(p) for p in drawn(scope, dtype, s))]
    assert not missed, f"{impl.name}: {bug.law} in {dtype} drew no problem with {bug.name} under seeds {missed}"


def test_every_class_is_claimed_by_some_bundled_implementation():
    unclaimed = [bug.name for bug in CLASSES if not any(bug.claims(i.capabilities) for i in BUNDLED)]
    assert not unclaimed


def test_a_declared_reach_draws_larger_configurations():
    wide = Capabilities(grouping="any", reach=Reach(heads=16, head_dim=32, length=64))
    scope = decide(LAWS["output_matches_reference"], wide, "cpu", torch.float64).scope
    seen = [p for s in SEEDS for p in drawn(scope, torch.float64, s)]
    assert max(p.config.num_heads for p in seen) > 8
    assert max(p.config.head_dim for p in seen) > 4
    assert max(max(p.L, p.S) for p in seen) > 33


def test_a_bad_reach_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"reach heads=0, but should be an int from 1 to 4096"):
        Reach(heads=0)
    with pytest.raises(ValueError, match=r"reach 'tall=3': expected name=int"):
        Reach.parse("tall=3")
