"""Attention modules of third-party packages, behind the adapter contract (the ``thirdparty`` extra).

Each entry names the package it needs and loads its adapter lazily, so importing
this package never fails when those packages are absent:

    >>> from attnspec.impls import thirdparty
    >>> thirdparty.available()   # adapters whose package imports
    >>> thirdparty.missing()     # (adapter name, why): package not installed
    >>> thirdparty.broken()      # (adapter name, why): installed, but the adapter failed to load

Install them with ``pip install -e '.[thirdparty]'``. What the suite found for each
module, and why each recorded deviation is one, is in ``docs/thirdparty.md``.

Every entry loads here (and ``tests/test_thirdparty.py`` fails on one that does not), but only those
with ``default_run=True`` are registered for the default run (:func:`entry_point`): the layers of
2024-25 decoders (``hf_modern.py``) and the SDPA paths of ``LlamaAttention`` are kept out to hold the default
run's time down, and certified by ``tests/test_real_modern_modules.py`` (every law in float64, the laws of
their features in every dtype).
Each is certified on request with ``--impl attnspec.impls.thirdparty.<module>:<NAME>``.
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
    default_run: bool = True  # registered by entry_point(); False: certified on request (--impl) only


def _attr(module: str, attr: str) -> Callable[[], object]:
    return lambda: getattr(importlib.import_module(f"{__name__}.{module}"), attr)


ENTRIES: list[Entry] = [
    Entry("hf.BartAttention", "transformers", "transformers", _attr("hf_transformers", "BART")),
    Entry("hf.Sam3Attention", "transformers", "transformers", _attr("hf_transformers", "SAM3")),
    Entry("hf.LlamaAttention", "transformers", "transformers", _attr("hf_transformers", "LLAMA")),
    Entry("hf.LlamaAttention.sdpa", "transformers", "transformers", _attr("hf_transformers", "LLAMA_SDPA"),
          default_run=False),  # another attention path of a layer already there: certified on request
    Entry("hf.LlamaAttention.rope", "transformers", "transformers", _attr("hf_transformers", "LLAMA_ROPE")),
    Entry("hf.LlamaAttention.rope.sdpa", "transformers", "transformers", _attr("hf_transformers", "LLAMA_ROPE_SDPA"),
          default_run=False),
    Entry("xtransformers.Attention", "x_transformers", "x-transformers", _attr("xtransformers", "ADAPTER")),
    # the features of 2024-25 decoders (hf_modern.py): certified by tests/test_real_modern_modules.py
    *(Entry(name, "transformers", "transformers", _attr("hf_modern", attr), default_run=False) for name, attr in [
        ("hf.Gemma2Attention", "GEMMA2"), ("hf.Qwen3Attention", "QWEN3"), ("hf.Olmo2Attention", "OLMO2"),
        ("hf.GptOssAttention", "GPT_OSS"), ("hf.BloomAttention", "BLOOM"), ("hf.GPTBigCodeAttention.mqa", "GPT_BIGCODE_MQA"),
        ("hf.LlamaAttention.rope.llama3", "LLAMA_ROPE_LLAMA3"), ("hf.LlamaAttention.rope.linear", "LLAMA_ROPE_LINEAR"),
        ("hf.LlamaAttention.rope.dynamic", "LLAMA_ROPE_DYNAMIC"), ("hf.LlamaAttention.rope.yarn", "LLAMA_ROPE_YARN"),
        ("hf.FalconAttention.alibi.sdpa", "FALCON_ALIBI_SDPA")]),
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


def available(default_run_only: bool = False) -> list:
    """The adapters whose package imports, in registry order (``default_run_only``: those of the default run)."""
    return [adapter for entry in ENTRIES if entry.default_run or not default_run_only
            for adapter, _, _ in [_try(entry)] if adapter is not None]


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
    """What the ``attnspec.impls`` entry point ``thirdparty`` registers: the adapters of the default run whose
    package is installed, and an :class:`attnspec.Unavailable` for each whose package is not."""
    from attnspec.adapter import Unavailable
    default = {e.name for e in ENTRIES if e.default_run}
    return available(default_run_only=True) + [Unavailable(name, reason) for name, reason in missing() if name in default]
