"""The laws: one function per law, in the module of its family, registered with what it requires.

Each law takes a :class:`~attnspec.case.Case` and raises :class:`~attnspec.errors.Mismatch`
when it does not hold; :meth:`Law.check` runs it on one problem and raises a
:class:`~attnspec.errors.ConformanceFailure` with the full message. The first line of
each law's docstring is the law itself.
"""
import importlib

from ..vocabulary import FAMILIES, FAMILY_LIST, SEVERITIES
from .registry import LAWS, Law, law, laws_for

for _family in FAMILY_LIST:  # each module registers its laws with @law on import, in the families' order
    importlib.import_module(f"{__name__}.{_family.module}")
importlib.import_module(f"{__name__}.kernel")  # the kernel contract's laws (attnspec.checks.kernel)

__all__ = ["FAMILIES", "FAMILY_LIST", "LAWS", "SEVERITIES", "Law", "law", "laws_for"]
