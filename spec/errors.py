"""One failure type and one message grammar for every law.

    <impl> breaks <law>: <the law>
      <what>[<index>] = <got>, but should be <expected> (<how far, and what is allowed>)
      problem: B=2, L=3, S=4, E=4, H=2, float64, ...
      reproduce:
        <a snippet that rebuilds the failing case>
"""
from __future__ import annotations


class ConformanceFailure(AssertionError):
    """A law does not hold. ``ratio`` is the worst error-to-tolerance ratio (None if not numeric)."""

    def __init__(self, message: str, *, impl: str = "", law: str = "", problem=None,
                 detail: str = "", ratio: float | None = None):
        super().__init__(message)
        self.impl, self.law, self.problem = impl, law, problem
        self.detail, self.ratio = detail, ratio


class Mismatch(Exception):
    """Raised inside a law; :class:`attnspec.case.Case` adds the context and re-raises a failure."""

    def __init__(self, detail: str, ratio: float | None = None):
        super().__init__(detail)
        self.detail, self.ratio = detail, ratio


class SuiteError(Exception):
    """attnspec itself cannot decide a law (e.g. it derived a NaN tolerance): an error, never a pass."""


def fmt_index(name: str, idx) -> str:
    return f"{name}[{', '.join(str(i) for i in idx)}]" if idx else name


def fmt_value(x: float) -> str:
    return f"{x:.6g}"
