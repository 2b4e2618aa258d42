"""Run laws with Hypothesis, inside pytest (:mod:`attnspec.suite`) or outside it (:func:`certify`).

    >>> from attnspec.runner import certify
    >>> verdicts = certify(attnspec.DropIn(MyAttention))
    >>> [v.law for v in verdicts if v.status == "fail"]

Each run gives one :class:`~attnspec.verdict.Verdict`.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field

import torch
from hypothesis import Phase, given, settings, target
from hypothesis.database import ExampleDatabase
from hypothesis import seed as hypothesis_seed

from . import profiles, tolerances
from .adapter import unavailable_reason
from .checks import LAWS, Law, laws_for
from .errors import ConformanceFailure
from .repro import adapter_origin
from .requirements import decide, dtype_name
from .kernel.scope import KernelScope
from .kernel.strategies import problems as kernel_problems
from .strategies import problems
from .verdict import Verdict
from .vocabulary import FAILING

# Every law runs once per dtype. float64 gets the profile's examples; each further dtype repeats the same
# logic at lower precision and gets this share of them: the bugs only a low precision shows (accumulation,
# saturation, casts) still meet every law there, and the kill matrix is unchanged (docs/kill_matrix.md).
REPEAT_SHARE = 0.4
TARGETED_FROM = 100  # examples per law from which Hypothesis also steers towards the largest errors (hypothesis.target)


@contextlib.contextmanager
def law_environment():
    """What a law runs under, set up around it and restored after: one thread (checks use tensors
    of a few dozen elements, where a thread pool only adds latency) and the warnings the draws
    cause on purpose silenced (torch warns whenever bool and float masks are mixed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Support for mismatched key_padding_mask", UserWarning)
            yield
    finally:
        torch.set_num_threads(threads)


class KeyedDatabase(ExampleDatabase):
    """Another example database, its keys prefixed with one law run's id (pytest's test id).

    Every law runs the same ``body`` function, whose digest is Hypothesis's own key, so without
    a prefix the example databases of every law and implementation would be one."""

    def __init__(self, database: ExampleDatabase, prefix: str):
        super().__init__()
        self.database, self.prefix = database, prefix.encode() + b"\0"

    def save(self, key: bytes, value: bytes) -> None:
        self.database.save(self.prefix + key, value)

    def fetch(self, key: bytes):
        yield from self.database.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.database.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.database.move(self.prefix + src, self.prefix + dest, value)


@dataclass
class _Tally:
    examples: int = 0
    compared: int = 0
    observed: dict = field(default_factory=dict)  # index of a declared deviation -> examples that confirmed it
    first: object = None  # the first ConformanceFailure inside a deviation's scope
    cannot_judge: int = 0  # examples whose measuring stick was broken (Case.requires)
    why: str = ""  # the first of their reasons

    def deviations(self, declared) -> tuple:
        return tuple({"deviation": d.short(), "reason": d.reason, "observed": self.observed.get(i, 0)}
                     for i, d in enumerate(declared))


def unrun(law: Law, adapter, device: str, dtype: torch.dtype | None, status: str, detail: str, **fields) -> Verdict:
    """The verdict of a law that did not run to its end (skipped, not claimed, crashed, hung, not run)."""
    return Verdict(impl=adapter.name, law=law.name, family=law.family, device=device,
                   dtype=dtype_name(dtype) if dtype is not None else "", status=status, severity=law.severity,
                   statement=law.statement, source=law.source, origin=adapter_origin(adapter), detail=detail,
                   requires=law.requirements, features=law.features, **fields)


def run_law(law: Law, adapter, *, device: str = "cpu", dtype: torch.dtype | None = None,
            max_examples: int | None = None, seed: int | None = None, database=None,
            digest: str | None = None, shrink: bool = True, before_example=None,
            profile: settings | None = None) -> Verdict:
    """Search for a counterexample to ``law`` outside the deviations declared for it.

    A failure inside a declared deviation's scope confirms it and the search goes on, so
    an unrelated failure of the same law is still found. ``dtype`` fixes the dtype of every
    problem; by default it is drawn from those claimed (float64 most often).
    ``digest`` keys the Hypothesis example database (pytest passes the test id);
    ``shrink=False`` reports the first counterexample found, unshrunk (faster);
    ``before_example(problem)`` is called before each example runs (:mod:`attnspec.isolation` uses it);
    ``profile``: the Hypothesis settings to start from (default: :func:`attnspec.profiles.active`).
    """
    start = time.perf_counter()
    unavailable = unavailable_reason(adapter, device)
    if unavailable:
        return unrun(law, adapter, device, dtype, "skipped", unavailable)
    claim = decide(law, adapter.capabilities, device, dtype)
    if not claim.claimed:
        return unrun(law, adapter, device, dtype, "not claimed", claim.why())
    declared = [d for d in adapter.capabilities.deviations if d.law == law.name]
    tally, worst = _Tally(), [0.0]

    def body(problem):
        if before_example is not None:
            before_example(problem)
        try:
            case = law.check(adapter, problem, device, claim.scope)
        except ConformanceFailure as failure:
            known = next((i for i, d in enumerate(declared) if d.covers(problem, device, failure.detail)), None)
            if known is None:
                raise
            tally.examples += 1
            tally.compared += 1
            tally.observed[known] = tally.observed.get(known, 0) + 1
            tally.first = tally.first or failure
            return
        tally.examples += 1
        tally.compared += case.compared
        if case.cannot_judge:
            tally.cannot_judge += 1
            tally.why = tally.why or case.cannot_judge
        worst[0] = max(worst[0], case.worst_ratio)
        if aim:
            for label, ratio in case.targets.items():
                target(ratio, label=label)

    if digest is not None and database is not None:
        database = KeyedDatabase(database, digest)
    options = dict(database=database, report_multiple_bugs=False, deadline=None,
                   suppress_health_check=profiles.SUPPRESS)
    if max_examples is not None:
        options["max_examples"] = max_examples
    if not shrink:  # any counterexample will do: no need to shrink it
        options["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
    chosen = settings(profile or profiles.active(), **options)
    if max_examples is None and dtype is not None and dtype != torch.float64:
        chosen = settings(chosen, max_examples=max(1, round(chosen.max_examples * REPEAT_SHARE)))
    # Hill-climbing towards the tolerance pays in long runs only: in 25 examples it cost a quarter of the time
    # (its Pareto front is kept whenever there is a database) and killed no mutant that plain draws miss.
    aim = chosen.max_examples >= TARGETED_FROM

    def example(problem):  # what Hypothesis runs: it digests this source for its keys and seeds, so keep it short
        body(problem)

    draw = kernel_problems if isinstance(claim.scope, KernelScope) else problems
    test = chosen(given(draw(claim.scope))(example))
    if seed is not None:
        test = hypothesis_seed(seed)(test)

    def ran(status, base=None, **fields):
        base = base or unrun(law, adapter, device, dtype, status, "")
        return base.replace(status=status, examples=tally.examples, compared=tally.compared,
                            seconds=time.perf_counter() - start, deviations=tally.deviations(declared), **fields)

    try:
        with law_environment():
            test()
    except ConformanceFailure as failure:
        return ran("fail", failure.verdict)
    except Exception as exc:  # the suite could not run the law: report it, never hide it
        inner = "".join(f"\n  caused by {type(e).__name__}: {e}" for e in getattr(exc, "exceptions", ()))
        found = getattr(exc, "verdict", None)
        return ran("error", found) if found is not None else ran("error", detail=f"{type(exc).__name__}: {exc}{inner}")
    if tally.observed:
        confirmed = "; ".join(f"{d.short()}: {d.reason}" for i, d in enumerate(declared) if i in tally.observed)
        return ran("deviation", tally.first.verdict,
                   detail=f"known deviation ({confirmed}); first seen as: {tally.first.detail}")
    if tally.compared < tolerances.MIN_COMPARED * tally.examples or tally.examples == 0:
        unjudged = f"; {tally.cannot_judge} could not judge it: {tally.why}" if tally.cannot_judge else ""
        return ran("inconclusive", ratio=worst[0],
                   detail=f"only {tally.compared} of {tally.examples} examples compared anything that could fail (a "
                          f"pass needs {tolerances.MIN_COMPARED:.0%}; see attnspec.tolerances.informative){unjudged}")
    return ran("pass", ratio=worst[0])


def certify(adapter, *, device: str = "cpu", dtype: torch.dtype | None = None, laws=None,
            max_examples: int | None = None, seed: int | None = None, stop_at_first_failure: bool = False,
            shrink: bool = True) -> list[Verdict]:
    """Run every law of ``adapter``'s contract (or the named ``laws``) on it; return one verdict per law.

    ``dtype``: certify in this dtype only (default: each problem draws one of those claimed).
    """
    names = [law.name for law in laws_for(adapter)] if laws is None else list(laws)
    unknown = [n for n in names if n not in LAWS]
    if unknown:
        raise ValueError(f"laws={unknown!r}: no such law; known: {', '.join(LAWS)}")
    verdicts = []
    for name in names:
        verdict = run_law(LAWS[name], adapter, device=device, dtype=dtype, max_examples=max_examples,
                          seed=seed, shrink=shrink)
        verdicts.append(verdict)
        if stop_at_first_failure and verdict.status in FAILING:
            break
    return verdicts
