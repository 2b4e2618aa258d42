"""What an implementation claims to support, and the reasons a problem is outside it.

A check that needs an unclaimed capability is reported as *not claimed*, never
as a pass. Every field defaults to the full ``nn.MultiheadAttention`` API, so a
drop-in declares only what it lacks, in one place.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .config import Config, Problem, Rope, check_alignment

LAYOUTS = ("seq_first", "batch_first", "unbatched")
OUT_PROJECTIONS = ("always", "multi-head", "never")
EDGE_CASES = ("empty sequences", "fully masked rows", "large inputs")
FULLY_MASKED_POLICIES = ("zeros", "nan", "unspecified")
# How causality reaches the module: only as an attention mask the suite builds, as the is_causal flag of
# ``Adapter.call``, or always (the module is causal and cannot be told otherwise).
CAUSAL_MODES = ("mask", "flag", "always")
CAUSAL_MASKS = ("key_padding_mask", "attn_mask")
WINDOW_KINDS = (False, True, "left", "symmetric")
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# What a deviation's ``when`` may name: the problem's fields, the configuration's, and three derived ones.
SCOPE_FIELDS = tuple(sorted({f.name for f in dataclasses.fields(Problem)} - {"config", "seed", "scale"}
                            | {f.name for f in dataclasses.fields(Config)} | {"device", "layout", "dtype"}))


def _scope_value(problem: Problem, device: str, name: str):
    if name == "device":
        return device
    if name == "layout":
        return problem.layout
    if name == "dtype":
        return str(problem.dtype).removeprefix("torch.")
    if hasattr(problem.config, name) and not hasattr(problem, name):
        return getattr(problem.config, name)
    return getattr(problem, name)


def _value_matches(actual, wanted) -> bool:
    if isinstance(wanted, (list, tuple)):
        return any(_value_matches(actual, w) for w in wanted)
    if isinstance(wanted, bool) and not isinstance(actual, bool):  # a mask or fully_masked: present or not
        return (actual is not None) == wanted
    if wanted == "none":
        return actual is None
    return actual == wanted


@dataclass(frozen=True)
class Deviation:
    """A known departure from the spec: ``law`` fails on the problems that ``when`` describes.

    * ``when``: problem fields and the values they must have for the deviation to apply
      (a list means any of them), e.g. ``{"need_weights": True, "key_padding_mask": "float"}``.
      Fields: :data:`SCOPE_FIELDS` (``dtype`` by name, e.g. ``"bfloat16"``; for a mask or
      ``fully_masked``, ``True`` means any kind and ``False`` or ``"none"`` means absent).
      Empty: every problem of the law.
    * ``match``: a regular expression that the failure's detail line must contain (``re.search``).
    * ``reason``: why, with an issue link where there is one.

    A failure of ``law`` outside ``when`` (or not matching ``match``) is a failure, not the deviation.
    """

    law: str
    reason: str
    when: Mapping[str, object] = field(default_factory=dict)
    match: str | None = None

    def __post_init__(self):
        if not (isinstance(self.law, str) and self.law):
            raise ValueError(f"deviation law={self.law!r}, but should be a law's name")
        if not (isinstance(self.reason, str) and self.reason.strip()):
            raise ValueError(f"deviation of {self.law}: reason={self.reason!r}, but should say why")
        if not isinstance(self.when, Mapping):
            raise ValueError(f"deviation of {self.law}: when={self.when!r}, but should be a mapping of "
                             f"problem fields to values")
        unknown = sorted(set(self.when) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"deviation of {self.law}: when names {unknown[0]!r}, which is not a problem field; "
                             f"known: {', '.join(SCOPE_FIELDS)}")
        if self.match is not None:
            try:
                re.compile(self.match)
            except (re.error, TypeError) as exc:
                raise ValueError(f"deviation of {self.law}: match={self.match!r} is not a regular expression "
                                 f"({exc})") from None
        object.__setattr__(self, "when", dict(self.when))

    @classmethod
    def of(cls, entry) -> "Deviation":
        """A :class:`Deviation` from itself or from a dict with its fields."""
        if isinstance(entry, cls):
            return entry
        if isinstance(entry, Mapping):
            extra = sorted(set(entry) - {"law", "reason", "when", "match"})
            if extra or "law" not in entry or "reason" not in entry:
                raise ValueError(f"deviation {dict(entry)!r}: should have the keys law and reason, and optionally "
                                 f"when and match" + (f" (unknown: {', '.join(extra)})" if extra else ""))
            return cls(**entry)
        raise ValueError(f"deviation {entry!r}: should be a attnspec.Deviation or a dict with law, reason, when, match")

    def covers(self, problem: Problem, device: str, detail: str) -> bool:
        """Whether a failure of this law on ``problem`` with this ``detail`` line is this deviation."""
        in_scope = all(_value_matches(_scope_value(problem, device, k), v) for k, v in self.when.items())
        return in_scope and (self.match is None or re.search(self.match, detail) is not None)

    def short(self) -> str:
        scope = ", ".join(f"{k}={v}" for k, v in self.when.items()) or "every problem"
        return f"{self.law} when {scope}" + (f" and the failure matches {self.match!r}" if self.match else "")


@dataclass(frozen=True)
class Capabilities:
    """Declared support. Fields default to everything ``nn.MultiheadAttention`` does.

    * ``cross_attention``: query, key and value may be distinct tensors with L != S;
      ``key_is_value``: in cross-attention the module takes one tensor as both keys and values
      (most cross-attention modules: a ``context``), so the suite passes ``value is key``.
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
      want multiples of 8). ``min_heads`` / ``max_heads``: the head counts supported.
    * ``out_projection``: ``"always"``; ``"multi-head"``: no output projection at one head
      (``get_weights`` gives ``Wo=None`` there); ``"never"``: none at all (the output is the
      concatenated heads, of width ``embed_dim``).
    * ``compute_dtype``: the module computes internally in this lower precision whatever its
      input (e.g. a float32 softmax): results in higher-precision dtypes are held to this
      dtype's tolerance, and the report says so.
    * ``mask_validation``: the module itself sees the masks it is given and rejects wrong shapes
      and dtypes. Declare False when the adapter converts masks (e.g. with :mod:`attnspec.masks`,
      which rejects them on the module's behalf): the two bad-mask laws are then not claimed.
    * ``embed_dim_and_heads``: the constructor takes embed_dim and num_heads, so an embed_dim
      not divisible by num_heads can be given (and must be rejected). False for modules
      configured by head width.
    * ``edge_cases``: the edge cases the module supports (:data:`EDGE_CASES`); a law on an
      edge case it leaves out is not claimed.
    * ``deviations``: known departures from the spec, each a :class:`Deviation` (or a dict of
      its fields) scoped to the problems where it applies; failures outside every scope fail.
    * ``causal``: how the module takes causality (:data:`CAUSAL_MODES`): ``"mask"`` only as an
      ``attn_mask`` (``call`` never gets ``is_causal``); ``"flag"``: ``call(..., is_causal=True)``
      hides the future; ``"always"``: every call is causal (``call`` always gets ``is_causal=True``).
      ``causal_masks``: the masks the flag (or always-on causality) may come with
      (:data:`CAUSAL_MASKS`, among those claimed). ``causal_alignment``: where the diagonal sits when
      L != S (:data:`attnspec.config.ALIGNMENTS`): ``"top-left"`` (SDPA's ``is_causal``, query i sees
      keys 0..i) or ``"bottom-right"`` (FlashAttention's ``causal``: query i sees keys 0..i + S - L).
    * ``num_kv_heads``: grouped-query attention: the constructor takes ``Config.num_kv_heads`` (a
      divisor of num_heads, 1 = multi-query); ``Wk``/``Wv`` have num_kv_heads * head_dim rows and query
      head h reads key/value head ``h // (num_heads // num_kv_heads)``.
    * ``window``: a sliding window: the constructor takes ``Config.window = (left, right)``
      (either None: unbounded); query i sees keys from ``pos - left`` to ``pos + right``, where pos
      is i placed by ``causal_alignment``. ``True``: any such pair; ``"left"``: only ``(left, None)``
      (a look-back window, Mistral's ``sliding_window = left + 1`` under causality); ``"symmetric"``:
      only ``(w, w)`` (Longformer's local window). :data:`WINDOW_KINDS`.
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
    min_heads: int = 1
    max_heads: int | None = None
    head_dim_multiple: int = 1
    key_is_value: bool = False
    out_projection: str = "always"
    compute_dtype: torch.dtype | None = None
    mask_validation: bool = True
    embed_dim_and_heads: bool = True
    edge_cases: tuple = EDGE_CASES
    deviations: tuple = ()
    causal: str = "mask"
    causal_masks: tuple = CAUSAL_MASKS
    causal_alignment: str = "top-left"
    num_kv_heads: bool = False
    window: bool | str = False
    rope: Rope | None = None
    decoding: bool = False

    def __post_init__(self):
        if isinstance(self.rope, Mapping):
            object.__setattr__(self, "rope", Rope(**self.rope))
        if self.rope is not None and not isinstance(self.rope, Rope):
            raise ValueError(f"rope={self.rope!r}, but should be None or a attnspec.Rope (pairing, base, fraction)")
        if not isinstance(self.decoding, bool):
            raise ValueError(f"decoding={self.decoding!r}, but should be True or False")
        if isinstance(self.deviations, Mapping) or isinstance(self.deviations, (str, bytes)):
            raise ValueError(f"deviations={self.deviations!r}, but should be a list of attnspec.Deviation (or dicts "
                             "with law, reason, when, match): a deviation is scoped to part of the problem space")
        object.__setattr__(self, "deviations", tuple(Deviation.of(d) for d in self.deviations))
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
        if self.out_projection not in OUT_PROJECTIONS:
            raise ValueError(f"out_projection={self.out_projection!r}, but should be one of {OUT_PROJECTIONS}")
        if self.compute_dtype is not None and self.compute_dtype not in ALL_DTYPES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}, but should be None or one of {ALL_DTYPES}")
        if not set(self.edge_cases) <= set(EDGE_CASES):
            raise ValueError(f"edge_cases={self.edge_cases!r}, but should be a subset of {EDGE_CASES}")
        if not (isinstance(self.min_heads, int) and self.min_heads >= 1
                and (self.max_heads is None or self.min_heads <= self.max_heads)):
            raise ValueError(f"min_heads={self.min_heads!r}, but should be an int from 1 to max_heads={self.max_heads}")
        if self.key_is_value and not self.cross_attention:
            raise ValueError("key_is_value=True describes cross-attention, but cross_attention=False")
        unknown = set(self.devices) - {"cpu", "cuda"}
        if unknown:
            raise ValueError(f"devices={self.devices!r}, but should be a subset of ('cpu', 'cuda')")
        if self.causal not in CAUSAL_MODES:
            raise ValueError(f"causal={self.causal!r}, but should be one of {CAUSAL_MODES}")
        check_alignment(self.causal_alignment)
        if isinstance(self.causal_masks, str) or not set(self.causal_masks) <= set(CAUSAL_MASKS):
            raise ValueError(f"causal_masks={self.causal_masks!r}, but should be a subset of {CAUSAL_MASKS}")
        if not isinstance(self.num_kv_heads, bool):
            raise ValueError(f"num_kv_heads={self.num_kv_heads!r}, but should be True or False")
        if not any(self.window is kind or (isinstance(kind, str) and self.window == kind) for kind in WINDOW_KINDS):
            raise ValueError(f"window={self.window!r}, but should be one of {WINDOW_KINDS}")
        for name in ("key_padding_mask", "attn_mask"):
            kinds = getattr(self, name)
            if not set(kinds) <= {"bool", "float"}:
                raise ValueError(f"{name}={kinds!r}, but should be a subset of ('bool', 'float')")

    def replace(self, **changes) -> "Capabilities":
        return dataclasses.replace(self, **changes)

    @property
    def any_mask(self) -> bool:
        return bool(self.key_padding_mask or self.attn_mask)

    @property
    def causal_flag(self) -> bool:
        """Causality reaches the module as the flag (``"flag"``) or is always on (``"always"``)."""
        return self.causal in ("flag", "always")

    def masks_with_causality(self, name: str) -> tuple:
        """The kinds of mask ``name`` that may come with the causal flag (all claimed ones without it)."""
        kinds = getattr(self, name)
        return kinds if name in self.causal_masks else ()

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
            (c.num_heads < self.min_heads, f"num_heads < {self.min_heads}"),
            (not problem.self_attention and problem.key_is_value != self.key_is_value,
             "keys and values as one tensor" if problem.key_is_value else "distinct key and value tensors"),
            (c.head_dim % self.head_dim_multiple != 0, f"head_dim not a multiple of {self.head_dim_multiple}"),
            (c.num_kv_heads not in (None, c.num_heads) and not self.num_kv_heads, "num_kv_heads != num_heads"),
            (c.window is not None and not self.window, "a sliding window"),
            (c.window is not None and self.window == "left" and c.window[1] is not None,
             "a window bounded on the right"),
            (c.window is not None and self.window == "symmetric" and (c.window[0] != c.window[1] or c.window[0] is None),
             "an asymmetric window"),
            (problem.is_causal and self.causal == "mask", "the is_causal flag"),
            (not problem.is_causal and self.causal == "always", "a call without causality"),
            (problem.is_causal and problem.key_padding_mask is not None and "key_padding_mask" not in self.causal_masks,
             "is_causal with a key_padding_mask"),
            (problem.is_causal and problem.attn_mask is not None and "attn_mask" not in self.causal_masks,
             "is_causal with an attn_mask"),
            (problem.positional and problem.L != problem.S and problem.alignment != self.causal_alignment,
             f"{problem.alignment} alignment"),
            (problem.rope != self.rope, "no rotary positions" if problem.rope is None else problem.rope.short()),
        ]
        why.extend(reason for failed, reason in checks if failed)
        return why
