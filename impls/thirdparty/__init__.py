"""Attention modules of third-party packages, behind the adapter contract (the ``thirdparty`` extra).

Each entry names the package it needs and loads its adapter lazily, so importing
this package never fails when those packages are absent:

    >>> from attnspec.impls import thirdparty
    >>> thirdparty.available()   # adapters whose package imports
    >>> thirdparty.missing()     # (adapter name, why): package not installed
    >>> thirdparty.broken()      # (adapter name, why): installed, but the adapter failed to load

Install them with ``pip install -e '.[thirdparty]'``. What the suite found for each
module, and why each recorded deviation is one, is in ``docs/thirdparty.md``.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

EXTRA = "pip install 'attnspec[thirdparty]'"

# The versions certified (docs/thirdparty.md); the thirdparty extra pins the same.
CERTIFIED = {"transformers": "5.23.0", "x-transformers": "2.31.10"}


@dataclass(frozen=True)
class Entry:
    """One third-party adapter: its name, the module it imports, the pip distribution, a loader."""

    name: str
    package: str  # importable top-level module
    distribution: str  # pip name, pinned in the thirdparty extra
    load: Callable[[], object]


def _attr(module: str, attr: str) -> Callable[[], object]:
    return lambda: getattr(importlib.import_module(f"{__name__}.{module}"), attr)


ENTRIES: list[Entry] = [
    Entry("hf.BartAttention", "transformers", "transformers", _attr("hf_transformers", "BART")),
    Entry("hf.Sam3Attention", "transformers", "transformers", _attr("hf_transformers", "SAM3")),
    Entry("hf.LlamaAttention", "transformers", "transformers", _attr("hf_transformers", "LLAMA")),
    Entry("hf.LlamaAttention.sdpa", "transformers", "transformers", _attr("hf_transformers", "LLAMA_SDPA")),
    Entry("hf.LlamaAttention.rope", "transformers", "transformers", _attr("hf_transformers", "LLAMA_ROPE")),
    Entry("hf.LlamaAttention.rope.sdpa", "transformers", "transformers", _attr("hf_transformers", "LLAMA_ROPE_SDPA")),
    Entry("xtransformers.Attention", "x_transformers", "x-transformers", _attr("xtransformers", "ADAPTER")),
]

_loaded: dict[str, tuple[object | None, str, bool]] = {}


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return False


def _try(entry: Entry) -> tuple[object | None, str, bool]:
    """(adapter, "", True) if it loads, else (None, the reason, whether the package is installed)."""
    if entry.name not in _loaded:
        if not _installed(entry.package):
            result = (None, f"{entry.distribution} is not installed: {EXTRA}", False)
        else:
            try:
                result = (entry.load(), "", True)
            except Exception as exc:  # installed, but the adapter cannot use it (another version?)
                pinned = CERTIFIED.get(entry.distribution, "?")
                result = (None, f"{entry.distribution} is installed but the adapter failed to load "
                                f"({type(exc).__name__}: {exc}); it is certified with "
                                f"{entry.distribution}=={pinned}: {EXTRA}", True)
        _loaded[entry.name] = result
    return _loaded[entry.name]


def available() -> list:
    """The adapters whose package imports, in registry order."""
    return [adapter for adapter, _, _ in map(_try, ENTRIES) if adapter is not None]


def missing() -> list[tuple[str, str]]:
    """(adapter name, reason) for every adapter whose package is not installed."""
    return [(e.name, reason) for e in ENTRIES for adapter, reason, installed in [_try(e)] if not installed]


def broken() -> list[tuple[str, str]]:
    """(adapter name, reason) for every adapter whose package is installed but that failed to load.

    Tests should fail on these, not skip: the extra pins the certified versions.
    """
    return [(e.name, reason) for e in ENTRIES for adapter, reason, installed in [_try(e)]
            if installed and adapter is None]


def entry_point() -> list:
    """What the ``attnspec.impls`` entry point ``thirdparty`` registers: the adapters whose package is
    installed, and an :class:`attnspec.Unavailable` for each whose package is not."""
    from attnspec.adapter import Unavailable
    return available() + [Unavailable(name, reason) for name, reason in missing()]
