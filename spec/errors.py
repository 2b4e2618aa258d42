"""The exceptions of a law's run, and the pieces of its one message grammar (:mod:`attnspec.verdict`)."""
from __future__ import annotations


class ConformanceFailure(AssertionError):
    """A law does not hold; ``verdict`` is its :class:`~attnspec.verdict.Verdict` (status ``fail``)."""

    def __init__(self, message: str, *, verdict=None):
        super().__init__(message)
        self.verdict = verdict

    @property
    def detail(self) -> str:
        return self.verdict.detail if self.verdict is not None else str(self)

    @property
    def problem(self):
        return self.verdict.problem if self.verdict is not None else None

    @property
    def ratio(self):
        return self.verdict.ratio if self.verdict is not None else None


class Mismatch(Exception):
    """Raised inside a law; :class:`attnspec.case.Case` adds the context and re-raises a failure."""

    def __init__(self, detail: str, ratio: float | None = None):
        super().__init__(detail)
        self.detail, self.ratio = detail, ratio


class CannotJudge(Exception):
    """Raised inside a law whose measuring stick is broken on this example (it stands on another law that
    fails here): the example compares nothing; a law that can judge too few examples is inconclusive."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class AdapterError(TypeError):
    """An adapter or module that does not meet the contract."""


class SuiteError(Exception):
    """attnspec itself cannot decide a law (e.g. it derived a NaN tolerance): an error, never a pass."""

    def __init__(self, message: str, *, verdict=None):
        super().__init__(message)
        self.verdict = verdict


def fmt_index(name: str, idx) -> str:
    return f"{name}[{', '.join(str(i) for i in idx)}]" if idx else name


def fmt_value(x: float) -> str:
    return f"{x:.6g}"
