"""How to load an adapter again, and a snippet that replays one failing case."""
from __future__ import annotations


def adapter_origin(adapter) -> str:
    """How to load ``adapter`` again: ``pkg.module:attribute`` if known, else its name."""
    return getattr(adapter, "origin", None) or adapter.name


def repro_snippet(adapter, law: str, problem, device: str = "cpu") -> str:
    """Python that rebuilds one failing case: paste it and the failure is raised again."""
    return "\n".join([
        "import torch",
        "from attnspec import Config, Problem, Rope, load_impl",
        "from attnspec.checks import LAWS",
        f"impl = load_impl({adapter_origin(adapter)!r})",
        f"problem = {problem!r}",
        f"LAWS[{law!r}].check(impl, problem, device={device!r})",
    ])
