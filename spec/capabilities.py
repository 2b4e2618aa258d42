"""What an implementation claims to support, and the reasons a problem is outside it.

A check that needs an unclaimed capability is reported as *not claimed*, never
as a pass. Every field defaults to the full ``nn.MultiheadAttention`` API, so a
drop-in declares only what it lacks, in one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .config import Problem

LAYOUTS = ("seq_first", "batch_first", "unbatched")
FULLY_MASKED_POLICIES = ("zeros", "nan", "unspecified")
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Capabilities:
    """Declared support. Fields default to everything ``nn.MultiheadAttention`` does.

    * ``cross_attention``: query, key and value may be distinct tensors with L != S.
    * ``kdim_vdim`` / ``qdim``: key, value (query) widths other than ``embed_dim``.
    * ``bias``: the values of the constructor's ``bias`` that are supported.
    * ``key_padding_mask`` / ``attn_mask``: the mask dtypes accepted (``"bool"``, ``"float"``).
    * ``padding_suffix_only``: key padding only as trailing padding (length masks).
    * ``attn_mask_3d``: per-sample, per-head ``(B*H, L, S)`` masks.
    * ``need_weights``: returns attention weights when asked; ``per_head_weights``:
      honours ``average_attn_weights=False``.
    * ``fully_masked_rows``: the declared output of a query row whose keys are all
      masked: ``"zeros"`` (attention contributes 0, so the row is ``out_proj.bias``:
      the spec's policy), ``"nan"``, or ``"unspecified"``.
    * ``head_mixing``: talking-heads mixing of logits and weights across heads.
    * ``head_dim_multiple``: head widths drawn are multiples of this (fused GPU kernels
      want multiples of 8).
    * ``deviations``: law name -> reason (with an issue number) for laws the
      implementation is known to break; they run and must still fail, visibly.
    """

    cross_attention: bool = True
    kdim_vdim: bool = True
    qdim: bool = False
    bias: tuple = (True, False)
    add_bias_kv: bool = True
    add_zero_attn: bool = True
    dropout: bool = True
    layouts: tuple = LAYOUTS
    key_padding_mask: tuple = ("bool", "float")
    padding_suffix_only: bool = False
    attn_mask: tuple = ("bool", "float")
    attn_mask_3d: bool = True
    need_weights: bool = True
    per_head_weights: bool = True
    gradients: bool = True
    head_mixing: bool = False
    fully_masked_rows: str = "zeros"
    dtypes: tuple = ALL_DTYPES
    devices: tuple = ("cpu", "cuda")
    max_heads: int | None = None
    head_dim_multiple: int = 1
    deviations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.fully_masked_rows not in FULLY_MASKED_POLICIES:
            raise ValueError(f"fully_masked_rows={self.fully_masked_rows!r}, but should be one of "
                             f"{FULLY_MASKED_POLICIES}")
        unknown = set(self.layouts) - set(LAYOUTS)
        if unknown or not self.layouts:
            raise ValueError(f"layouts={self.layouts!r}, but should be a non-empty subset of {LAYOUTS}")
        if not (isinstance(self.head_dim_multiple, int) and self.head_dim_multiple >= 1):
            raise ValueError(f"head_dim_multiple={self.head_dim_multiple!r}, but should be a positive int")
        bad = [d for d in self.dtypes if d not in ALL_DTYPES]
        if bad:
            raise ValueError(f"dtypes={self.dtypes!r}: {bad[0]!r} is not one of {ALL_DTYPES}")
        unknown = set(self.devices) - {"cpu", "cuda"}
        if unknown:
            raise ValueError(f"devices={self.devices!r}, but should be a subset of ('cpu', 'cuda')")
        for name in ("key_padding_mask", "attn_mask"):
            kinds = getattr(self, name)
            if not set(kinds) <= {"bool", "float"}:
                raise ValueError(f"{name}={kinds!r}, but should be a subset of ('bool', 'float')")

    def replace(self, **changes) -> "Capabilities":
        return dataclasses.replace(self, **changes)

    @property
    def any_mask(self) -> bool:
        return bool(self.key_padding_mask or self.attn_mask)

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """Why ``problem`` lies outside these capabilities (empty if it does not)."""
        c, why = problem.config, []
        checks = [
            (not problem.self_attention and not self.cross_attention, "cross-attention"),
            ((c.kdim is not None or c.vdim is not None) and not self.kdim_vdim, "kdim/vdim"),
            (c.qdim is not None and not self.qdim, "qdim"),
            (c.bias not in self.bias, f"bias={c.bias}"),
            (c.add_bias_kv and not self.add_bias_kv, "add_bias_kv"),
            (c.add_zero_attn and not self.add_zero_attn, "add_zero_attn"),
            (c.dropout > 0 and not self.dropout, "dropout"),
            (problem.layout not in self.layouts, f"{problem.layout} input"),
            (problem.key_padding_mask not in (None, *self.key_padding_mask),
             f"{problem.key_padding_mask} key_padding_mask"),
            (problem.attn_mask not in (None, *self.attn_mask), f"{problem.attn_mask} attn_mask"),
            (problem.mask_3d and not self.attn_mask_3d, "3-D attn_mask"),
            (problem.need_weights and not self.need_weights, "need_weights=True"),
            (problem.need_weights and not problem.average_attn_weights and not self.per_head_weights,
             "average_attn_weights=False"),
            (problem.dtype not in self.dtypes, f"dtype {problem.dtype}"),
            (self.max_heads is not None and c.num_heads > self.max_heads, f"num_heads > {self.max_heads}"),
            (c.head_dim % self.head_dim_multiple != 0, f"head_dim not a multiple of {self.head_dim_multiple}"),
        ]
        why.extend(reason for failed, reason in checks if failed)
        return why
