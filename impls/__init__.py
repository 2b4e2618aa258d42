"""Every attention variant from the seed documents, behind the adapter contract.

* ``BUNDLED``: adapters that must pass every check they claim (certified correct).
* ``KNOWN_BAD``: the seeds' originals as written and a negative control, each
  with the laws that must reject it. A suite that passes them is broken.
"""
from __future__ import annotations

if __name__ != "attnspec.impls":  # the repository's impls/ folder is attnspec.impls: one name only
    raise ImportError(f"this is the attnspec.impls package, imported as {__name__!r}: import attnspec.impls")

from dataclasses import dataclass

from attnspec.adapter import Adapter

from . import (modern_attention, nanogpt, positional_control, sdpa_kernels, seed000_heads_list, seed000_original, seed001_multiattention,
               seed001_original, seed002_original, seed002_view_transpose, seed003_talking_heads,
               torch_mha)

try:
    from .sdpa import SDPA
except ModuleNotFoundError as exc:  # written separately; registered once it exists
    if exc.name != f"{__name__}.sdpa":
        raise
    SDPA = None


@dataclass(frozen=True)
class KnownBad:
    """An implementation that each law in ``rejected_by`` must reject, and why."""

    adapter: Adapter
    rejected_by: tuple[str, ...]
    why: str


BUNDLED: list = [
    torch_mha.ADAPTER,
    seed000_heads_list.ADAPTER,
    seed001_multiattention.ADAPTER,
    seed002_view_transpose.ADAPTER,
    seed003_talking_heads.ADAPTER,
    *([SDPA] if SDPA is not None else []),
    *sdpa_kernels.KERNELS,
    *modern_attention.ADAPTERS,
    *nanogpt.ADAPTERS,
]

KNOWN_BAD: list = [
    KnownBad(seed000_original.ADAPTER,
             rejected_by=("output_matches_reference", "gradients_match_reference"),
             why="einsum('nci, ncj -> nc') collapses the scores to one number per token, the "
                 "softmax runs over the sequence and each token only scales its own value"),
    KnownBad(seed001_original.ADAPTER,
             rejected_by=("output_shapes", "output_matches_reference"),
             why="cannot be constructed: nn.MultiheadAttention() without arguments raises "
                 "TypeError (then nn.Linear(None, ...) and the emded_dim typo)"),
    KnownBad(seed002_original.ADAPTER,
             rejected_by=("output_shapes", "output_matches_reference"),
             why="NameError on every call: the softmax reads the typo aattn_scores"),
    KnownBad(positional_control.ADAPTER,
             rejected_by=("self_attention_permutation_equivariance", "key_value_permutation_invariance",
                          "query_permutation_equivariance", "output_matches_reference"),
             why="negative control: sinusoidal position encodings added to query, key and value "
                 "make attention depend on token order"),
]

# Each adapter records where it lives, so a failure's repro snippet can load it again.
for _module in (torch_mha, seed000_heads_list, seed000_original, seed001_multiattention, seed001_original,
                seed002_original, seed002_view_transpose, seed003_talking_heads, positional_control):
    _module.ADAPTER.origin = f"{_module.__name__}:ADAPTER"
modern_attention.TOP_LEFT.origin = "attnspec.impls.modern_attention:TOP_LEFT"
modern_attention.BOTTOM_RIGHT.origin = "attnspec.impls.modern_attention:BOTTOM_RIGHT"
modern_attention.ROPE.origin = "attnspec.impls.modern_attention:ROPE"
modern_attention.ROPE_INTERLEAVED.origin = "attnspec.impls.modern_attention:ROPE_INTERLEAVED"
nanogpt.FLASH.origin, nanogpt.MANUAL.origin = "attnspec.impls.nanogpt:FLASH", "attnspec.impls.nanogpt:MANUAL"
if SDPA is not None:
    SDPA.origin = "attnspec.impls.sdpa:SDPA"
