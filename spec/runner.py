"""Run laws with Hypothesis, inside pytest (:mod:`spec.suite`) or outside it (:func:`certify`).

    >>> from spec.runner import certify
    >>> results = certify(spec.DropIn(MyAttention))
    >>> [r.law for r in results if r.status == "fail"]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed

from . import profiles
from .adapter import unavailable_reason
from .checks import LAWS, Law
from .errors import ConformanceFailure

STATUSES = ("pass", "fail", "deviation", "not claimed", "error", "skipped")


def single_threaded():
    """Checks use tensors of a few dozen elements: a thread pool only adds latency (1000x here)."""
    torch.set_num_threads(1)


@dataclass
class LawResult:
    law: str
    family: str
    status: str
    message: str = ""
    seconds: float = 0.0
    ratio: float | None = None
    problem: object = None
    extra: dict = field(default_factory=dict)


def run_law(law: Law, adapter, *, device: str = "cpu", dtype: torch.dtype | None = None,
            max_examples: int | None = None, seed: int | None = None, database=None,
            digest: str | None = None, shrink: bool = True) -> LawResult:
    """Search for a counterexample to ``law``. A declared deviation must still fail.

    ``dtype`` fixes the dtype of every problem; by default it is drawn from those
    claimed (float64 most often).
    ``digest`` keys the Hypothesis example database (pytest passes the test id);
    ``shrink=False`` reports the first counterexample found, unshrunk (faster).
    """
    start = time.perf_counter()
    unavailable = unavailable_reason(adapter, device)
    if unavailable:
        return LawResult(law.name, law.family, "skipped", unavailable)
    reasons = law.not_claimed(adapter.capabilities, device, dtype)
    if reasons:
        return LawResult(law.name, law.family, "not claimed", "needs " + ", ".join(reasons))
    worst = [0.0]

    def body(problem):
        case = law.check(adapter, problem, device)
        worst[0] = max(worst[0], case.worst_ratio)

    if digest is not None:
        body._hypothesis_internal_add_digest = digest.encode()
    deviation = adapter.capabilities.deviations.get(law.name)
    options = dict(database=database, report_multiple_bugs=False, deadline=None,
                   suppress_health_check=profiles.SUPPRESS)
    if max_examples is not None:
        options["max_examples"] = max_examples
    if deviation or not shrink:  # any counterexample will do: no need to shrink it
        options["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
    test = settings(profiles.active(), **options)(given(law.problems(adapter.capabilities, device, dtype))(body))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    elapsed = lambda: time.perf_counter() - start  # noqa: E731
    try:
        test()
    except ConformanceFailure as failure:
        if deviation:
            return LawResult(law.name, law.family, "deviation", f"known deviation: {deviation}\n{failure}",
                             elapsed(), failure.ratio, failure.problem)
        return LawResult(law.name, law.family, "fail", str(failure), elapsed(), failure.ratio, failure.problem)
    except Exception as exc:  # the suite could not run the law: report it, never hide it
        inner = "".join(f"\n  caused by {type(e).__name__}: {e}" for e in getattr(exc, "exceptions", ()))
        return LawResult(law.name, law.family, "error", f"{type(exc).__name__}: {exc}{inner}", elapsed())
    if deviation:
        return LawResult(law.name, law.family, "fail",
                         f"declared deviation no longer reproduces ({deviation}): remove it from deviations",
                         elapsed(), worst[0])
    return LawResult(law.name, law.family, "pass", "", elapsed(), worst[0])


def certify(adapter, *, device: str = "cpu", dtype: torch.dtype | None = None, laws=None,
            max_examples: int | None = None, seed: int | None = None, stop_at_first_failure: bool = False,
            shrink: bool = True) -> list[LawResult]:
    """Run every law (or the named ``laws``) on ``adapter``; return one result per law.

    ``dtype``: certify in this dtype only (default: each problem draws one of those claimed).
    """
    names = list(LAWS) if laws is None else list(laws)
    unknown = [n for n in names if n not in LAWS]
    if unknown:
        raise ValueError(f"laws={unknown!r}: no such law; known: {', '.join(LAWS)}")
    single_threaded()
    results = []
    for name in names:
        result = run_law(LAWS[name], adapter, device=device, dtype=dtype, max_examples=max_examples,
                         seed=seed, shrink=shrink)
        results.append(result)
        if stop_at_first_failure and result.status in ("fail", "error"):
            break
    return results
