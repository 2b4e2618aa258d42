"""The law registry: :class:`Law`, the :func:`law` decorator, and ``LAWS``."""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from typing import Callable

import torch
from hypothesis.errors import HypothesisException

from ..capabilities import ALL_DTYPES
from ..case import Case
from ..errors import CannotJudge, ConformanceFailure, Mismatch
from ..requirements import Requirement
from ..vocabulary import FAMILY, SEVERITIES

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Law:
    """One law: its function, family, requirements (:mod:`attnspec.requirements`), where it applies."""

    name: str
    family: str
    fn: Callable[[Case], None]
    requires: tuple = ()
    devices: tuple = ("cpu", "cuda")
    dtypes: tuple = ALL_DTYPES  # where its comparisons can be informative (attnspec.tolerances)
    severity: str = "results"  # a key of SEVERITIES
    contract: str = "module"  # whose laws: "module" (attnspec.Adapter) or "kernel" (attnspec.kernel)

    @property
    def statement(self) -> str:
        """The law itself: the first line of its docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    @property
    def requirements(self) -> tuple:
        """What the law requires, in words (the reasons of its requirements)."""
        return tuple(r.reason for r in self.requires if r.reason)

    @property
    def features(self) -> tuple:
        """The features beyond nn.MultiheadAttention's that the law names (its feature requirements' reasons)."""
        return tuple(r.reason for r in self.requires if getattr(r, "feature", False))

    @property
    def source(self) -> str:
        """Where the law is written: ``attnspec/checks/<family>.py:<line>``."""
        path = inspect.getsourcefile(self.fn) or ""
        line = inspect.getsourcelines(self.fn)[1]
        return f"attnspec/{os.path.relpath(path, PACKAGE)}:{line}".replace(os.sep, "/")

    def check(self, adapter, problem, device: str = "cpu", scope=None) -> Case:
        """Apply the law to ``adapter`` on ``problem``; raise ConformanceFailure if it fails.

        ``scope``: the law's claim (:func:`attnspec.requirements.decide`), decided again when not given."""
        if self.contract == "kernel":
            from ..kernel.case import KernelCase
            case = KernelCase(adapter, problem, device, self, scope)
        else:
            case = Case(adapter, problem, device, self, scope)
        with seeded_rng(problem.seed, device):  # dropout draws replay with the problem
            try:
                self.fn(case)
            except Mismatch as m:
                raise case.failure(m) from None
            except CannotJudge as c:  # the example compares nothing; the runner says why if too few do
                case.cannot_judge = c.detail
            except (ConformanceFailure, HypothesisException):  # a nested case's verdict; assume()
                raise
            except Exception as exc:  # the law's own code: an error that names where, never a verdict
                raise case.error(exc) from exc
        return case


@contextlib.contextmanager
def seeded_rng(seed: int, device: str):
    """Seed torch's global generator of the CPU (and of ``device`` if it is a GPU) and restore it after.

    Not ``torch.manual_seed``: that also seeds every accelerator backend, lazily, recording a
    stack trace each time (milliseconds per example on a CPU-only build)."""
    cpu_state = torch.get_rng_state()
    gpu = torch.device(device) if torch.device(device).type == "cuda" else None
    gpu_state = torch.cuda.get_rng_state(gpu) if gpu is not None else None
    torch.default_generator.manual_seed(seed)
    if gpu is not None:
        with torch.cuda.device(gpu):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu_state, gpu)


LAWS: dict[str, Law] = {}
CONTRACTS = {"module": "attnspec.checks", "kernel": "attnspec.checks.kernel"}  # where each contract's laws live


def laws_for(adapter) -> list:
    """The laws of ``adapter``'s contract (:func:`attnspec.requirements.contract_of`), in registration order."""
    from ..requirements import contract_of
    contract = contract_of(adapter.capabilities)
    return [law for law in LAWS.values() if law.contract == contract]


def law(family: str, *requires: Requirement, devices: tuple = ("cpu", "cuda"), dtypes: tuple = ALL_DTYPES,
        severity: str = "results", contract: str = "module"):
    """Register a law function under ``family``, with the requirements it needs (:mod:`attnspec.requirements`).

    ``devices``: where the law applies (a cross-device law runs on CUDA only).
    ``dtypes``: where attnspec can decide it (e.g. :data:`attnspec.tolerances.HIGH_PRECISION`).
    ``severity``: what a failure means (:data:`SEVERITIES`).
    ``contract``: whose law it is, :data:`CONTRACTS` (modules, or kernels: :mod:`attnspec.kernel`).
    A law lives in the module of its family (:data:`attnspec.vocabulary.FAMILY_LIST`) in its contract's package.
    """
    if contract not in CONTRACTS:
        raise ValueError(f"contract={contract!r}, but should be one of {tuple(CONTRACTS)}")
    if family not in FAMILY:
        raise ValueError(f"family={family!r}, but should be one of {tuple(FAMILY)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r}, but should be one of {tuple(SEVERITIES)}")
    bad = [r for r in requires if not isinstance(r, Requirement)]
    if bad:
        raise ValueError(f"requires={bad[0]!r}, but should be an attnspec.requirements.Requirement")

    def register(fn):
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"law {fn.__name__} has no docstring: its first line must state the law")
        home = f"{CONTRACTS[contract]}.{FAMILY[family].module}"
        if fn.__module__ != home:
            raise ValueError(f"law {fn.__name__} of family {family!r} is in {fn.__module__}, but should be in {home}")
        if fn.__name__ in LAWS and LAWS[fn.__name__].fn.__module__ != fn.__module__:
            raise ValueError(f"law {fn.__name__} is already registered from {LAWS[fn.__name__].fn.__module__}: "
                             "law names are unique across contracts")
        LAWS[fn.__name__] = Law(fn.__name__, family, fn, tuple(requires), tuple(devices), tuple(dtypes), severity,
                                contract)
        return fn

    return register
