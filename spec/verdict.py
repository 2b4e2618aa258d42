"""The one record of a result: a :class:`Verdict` per (implementation, law, device, dtype).

The runner makes it, the child process that runs a law sends it back, pytest carries it from its
workers, and every report (:mod:`attnspec.report`) renders it. Its message has one grammar::

    <impl> breaks <law> (<file:line>): <the law>
      <what>[<index>] = <got>, but should be <expected> (<how far, and what is allowed>)
      problem: B=2, L=3, S=4, E=4, H=2, float64, ..., on cpu
      reproduce: <one line of Python that replays the failing case>

No torch here: pytest-xdist's controller reads verdicts without importing it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .vocabulary import FAILING, STATUSES

SCHEMA_VERSION = 2  # of the JSON report built from verdicts (attnspec.report.to_json)


@dataclass(frozen=True)
class Verdict:
    """What one law found on one implementation, device and dtype.

    * ``status``: one of :data:`attnspec.vocabulary.STATUSES`.
    * ``detail``: what is wrong (for a failure, the mismatch line; for a crash, the exit and the process's
      last words), or why the law was not claimed or skipped, or the deviation confirmed.
    * ``problem``: the (shrunk) failing problem's non-default fields (:meth:`attnspec.Problem.to_dict`),
      ``problem_text`` the same in words; ``repro`` a snippet that replays it.
    * ``examples`` run, of which ``compared`` compared something that could fail; ``ratio``: the worst
      error-to-tolerance ratio seen; ``deviations``: the declared deviations of this law, each
      ``{"deviation", "reason", "observed"}``.
    """

    impl: str
    law: str
    family: str
    device: str
    dtype: str  # "" where each problem drew its dtype
    status: str
    severity: str = "results"
    statement: str = ""
    source: str = ""  # the law's file:line
    origin: str = ""  # how to load the implementation again (pkg.module:attr)
    detail: str = ""
    problem: dict | None = None
    problem_text: str = ""
    held_to: str = ""  # the lower dtype whose tolerance applied (a declared compute_dtype)
    repro: str = ""
    examples: int = 0
    compared: int = 0
    ratio: float | None = None
    seconds: float = 0.0
    deviations: tuple = ()
    requires: tuple = ()  # what the law requires, in words
    features: tuple = ()  # the features it names (of requires): a law naming one is listed before general ones

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r}, but should be one of {STATUSES}")
        object.__setattr__(self, "deviations", tuple(dict(d) for d in self.deviations))
        object.__setattr__(self, "requires", tuple(self.requires))
        object.__setattr__(self, "features", tuple(self.features))

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def replace(self, **changes) -> "Verdict":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def headline(self) -> str:
        """The first line of the message: who, which law, where it is written, and what it says."""
        where = f" ({self.source})" if self.source else ""
        verb = {"fail": "breaks", "crashed": "crashed in", "hung": "hung in", "not run": "did not run",
                "inconclusive": "is inconclusive on", "deviation": "deviates as declared from",
                "error": "could not be judged on"}.get(self.status, f"{self.status}:")
        text = f"{self.impl} {verb} {self.law}{where}"
        return f"{text}: {self.statement}" if self.statement else text

    @property
    def message(self) -> str:
        """The whole message, in the suite's one grammar (see the module docstring)."""
        lines = [self.headline()]
        lines += ["  " + line for line in self.detail.strip().splitlines()]
        if self.problem_text:
            held = f" (held to {self.held_to}'s tolerance: declared compute_dtype)" if self.held_to else ""
            lines.append(f"  problem: {self.problem_text}, on {self.device}{held}")
        if self.repro:
            lines.append(f"  reproduce: {self.repro}")
        return "\n".join(lines)

    def first_detail(self) -> str:
        """The first line of the detail: what is wrong, in one line."""
        lines = self.detail.strip().splitlines()
        return lines[0] if lines else ""
