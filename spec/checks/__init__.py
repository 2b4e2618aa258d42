"""The laws: one function per law, registered with its family and what it needs.

Each law takes a :class:`~attnspec.case.Case` and raises :class:`~attnspec.errors.Mismatch`
when it does not hold; :meth:`Law.check` runs it on one problem and raises a
:class:`~attnspec.errors.ConformanceFailure` with the full message. The first line of
each law's docstring is the law itself.
"""
from .registry import FAMILIES, LAWS, NEEDS, SEVERITIES, Law, law

# each module registers its laws with @law on import, in the families' order
from . import shape, equivalence, masking, permutation, headsplit, numerics, dropout, paths, hygiene, badinput  # noqa: E402,F401,I001
from . import causal, grouped, window  # noqa: E402,F401,I001  beyond nn.MultiheadAttention: flags, GQA, windows
from . import rope, decoding  # noqa: E402,F401,I001  decoder attention: rotary positions, a key/value cache

__all__ = ["FAMILIES", "LAWS", "NEEDS", "SEVERITIES", "Law", "law"]
