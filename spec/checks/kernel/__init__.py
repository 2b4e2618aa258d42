"""The kernel contract's laws (:mod:`attnspec.kernel`): one module per law family, as the module contract's.

Each law takes a :class:`~attnspec.kernel.case.KernelCase`; the first line of its docstring is the law.
"""
import importlib

from ...vocabulary import FAMILY_LIST

MODULES = ("shape", "equivalence", "masking", "positional", "numerics", "permutation", "headsplit", "paths",
           "decoding", "hygiene", "badinput")

for _family in FAMILY_LIST:  # in the families' order, as the module contract's laws
    if _family.module in MODULES:
        importlib.import_module(f"{__name__}.{_family.module}")
