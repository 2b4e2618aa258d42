"""Certify an implementation outside pytest: every law, one result each.

    >>> from spec.runner import certify
    >>> results = certify(spec.DropIn(MyAttention))
    >>> [r for r in results if r.status == "fail"]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed

from . import profiles  # noqa: F401  (registers the profiles)
from .checks import LAWS, Law
from .errors import ConformanceFailure

def single_threaded():
    """Checks use tensors of a few dozen elements: a thread pool only adds latency (1000x here)."""
    import torch
    torch.set_num_threads(1)


STATUSES = ("pass", "fail", "not claimed", "deviation", "error")


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


def run_law(law: Law, adapter, *, device: str = "cpu", max_examples: int | None = None,
            seed: int | None = None) -> LawResult:
    """Search for a counterexample to ``law``; a declared deviation must still fail."""
    start = time.perf_counter()
    reasons = law.not_claimed(adapter.capabilities, device)
    if reasons:
        return LawResult(law.name, law.family, "not claimed", "needs " + ", ".join(reasons))
    worst = [0.0]

    def body(problem):
        case = law.check(adapter, problem, device)
        worst[0] = max(worst[0], case.worst_ratio)

    deviation = adapter.capabilities.deviations.get(law.name)
    options = dict(database=None, report_multiple_bugs=False, deadline=None,
                   suppress_health_check=profiles.SUPPRESS)
    if deviation:  # it is expected to fail: any counterexample will do, no need to shrink it
        options["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
    if max_examples is not None:
        options["max_examples"] = max_examples
    test = settings(profiles.active(), **options)(given(law.problems(adapter.capabilities, device))(body))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    try:
        test()
    except ConformanceFailure as failure:
        status = "deviation" if deviation else "fail"
        message = f"known deviation: {deviation}\n{failure}" if deviation else str(failure)
        return LawResult(law.name, law.family, status, message, time.perf_counter() - start,
                         failure.ratio, failure.problem)
    except Exception as exc:  # the suite could not run the law: report it, never hide it
        inner = "".join(f"\n  caused by {type(e).__name__}: {e}" for e in getattr(exc, "exceptions", ()))
        return LawResult(law.name, law.family, "error", f"{type(exc).__name__}: {exc}{inner}",
                         time.perf_counter() - start)
    if deviation:
        return LawResult(law.name, law.family, "fail",
                         f"declared deviation no longer reproduces ({deviation}): remove it",
                         time.perf_counter() - start, worst[0])
    return LawResult(law.name, law.family, "pass", "", time.perf_counter() - start, worst[0])


def certify(adapter, *, device: str = "cpu", laws=None, max_examples: int | None = None,
            seed: int | None = None, stop_at_first_failure: bool = False) -> list[LawResult]:
    """Run every law (or the named ``laws``) on ``adapter``; return one result per law."""
    names = list(LAWS) if laws is None else list(laws)
    single_threaded()
    unknown = [n for n in names if n not in LAWS]
    if unknown:
        raise ValueError(f"laws={unknown!r}: no such law; known: {', '.join(LAWS)}")
    results = []
    for name in names:
        result = run_law(LAWS[name], adapter, device=device, max_examples=max_examples, seed=seed)
        results.append(result)
        if stop_at_first_failure and result.status in ("fail", "error"):
            break
    return results
