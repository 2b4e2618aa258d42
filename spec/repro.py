"""How to load an adapter again, and a snippet that replays one failing case."""
from __future__ import annotations

import re


def adapter_origin(adapter) -> str:
    """How to load ``adapter`` again: ``pkg.module:attribute`` if known, else its name."""
    return getattr(adapter, "origin", None) or adapter.name


def replay(impl, law: str, problem, device: str = "cpu"):
    """Apply ``law`` to ``impl`` (an adapter, or ``pkg.module:Name`` as ``--impl`` takes it) on ``problem``.

    Raises :class:`~attnspec.errors.ConformanceFailure` with the law's message if it fails, as in the run
    that found it; returns the :class:`~attnspec.case.Case` otherwise."""
    from .checks import LAWS
    from .loading import load_impl

    adapter = load_impl(impl) if isinstance(impl, str) else impl
    if law not in LAWS:
        raise ValueError(f"law={law!r}: no such law; known: {', '.join(LAWS)}")
    return LAWS[law].check(adapter, problem, device=device)


def repro_snippet(adapter, law: str, problem, device: str = "cpu") -> str:
    """One line of Python that replays one failing case: paste it and the failure is raised again. The problem
    lists only the fields that differ from their defaults."""
    text = repr(problem)
    names = [n for n in ("Config", "Problem", "Rope", "RopeScaling", "QKNorm", "KernelProblem", "VarlenProblem",
                         "CacheProblem")
             if re.search(rf"\b{n}\(", text)]
    imports = (["import torch"] if "torch." in text else []) + [f"from attnspec import {', '.join(names)}, replay"]
    where = "" if device == "cpu" else f", device={device!r}"
    return "; ".join([*imports, f"replay({adapter_origin(adapter)!r}, {law!r}, {text}{where})"])
