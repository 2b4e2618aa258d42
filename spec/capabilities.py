"""What an implementation claims to support, and the known deviations it declares.

Every field defaults to the full ``nn.MultiheadAttention`` API, so a drop-in declares only what it
lacks, in one place. Whether a law is claimed is decided from these fields in one place,
:func:`attnspec.requirements.decide`; a law that needs an unclaimed capability is reported as
*not claimed*, never as a pass.

Capability names never repeat the name of a :class:`~attnspec.config.Config` or
:class:`~attnspec.config.Problem` field: ``Config.dropout`` is a rate, ``Capabilities.attention_dropout``
says whether the module has dropout at all. The names of an earlier release still work, with a
``DeprecationWarning`` naming the new one (:data:`RENAMED`).
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .config import Config, Problem, QKNorm, Rope, check_alignment

LAYOUTS = ("seq_first", "batch_first", "unbatched")
MASK_DTYPES = ("bool", "float")
OUT_PROJECTIONS = ("always", "multi-head", "never")
EDGE_CASES = ("empty sequences", "fully masked rows", "large inputs")
FULLY_MASKED_POLICIES = ("zeros", "nan", "unspecified")
# How causality reaches the module: only as an attention mask the suite builds, as the is_causal flag of
# ``Adapter.call``, or always (the module is causal and cannot be told otherwise).
CAUSALITIES = ("mask", "flag", "always")
CAUSAL_MASKS = ("key_padding_mask", "attn_mask")
# Which key/value head counts the constructor takes for num_heads H: only H; only 1 (multi-query);
# 1 or H; any divisor of H (grouped-query attention).
GROUPINGS = ("none", "multi-query", "one-or-all", "any")
# Which windows the constructor takes: any (left, right); only (left, None), a look-back window; only (w, w).
WINDOW_KINDS = (None, "any", "left", "symmetric")
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _kv_heads(value):
    return "any" if value is True else "none" if value is False else value


def _window(value):
    return "any" if value is True else None if value is False else value


@dataclass(frozen=True)
class Reach:
    """How far the draws go, beyond what any law needs: the most heads, the widest head and the longest
    sequence drawn (the small ones are drawn most; these come up now and then). Raise them for a module
    whose bugs hide in larger configurations; each costs time. ``--attnspec-reach heads=16,length=128``
    raises them for every implementation of a run.

    * ``heads``: query heads up to this (groups of 3 and 4 over 2 key/value heads need 6 and 8).
    * ``head_dim``: head widths up to ``max(head_dim, 4 * head_dim_multiple)``.
    * ``length``: query and key lengths up to this.
    """

    heads: int = 8
    head_dim: int = 4
    length: int = 33

    def __post_init__(self):
        for name in ("heads", "head_dim", "length"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
                raise ValueError(f"reach {name}={value!r}, but should be an int from 1 to 4096")

    @classmethod
    def parse(cls, text: str) -> "Reach":
        """``"heads=16,length=128"`` (the ``--attnspec-reach`` option) as a Reach; the rest at their defaults."""
        fields = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, value = part.partition("=")
            if name not in ("heads", "head_dim", "length") or not value.strip().isdigit():
                raise ValueError(f"reach {part!r}: expected name=int with name one of heads, head_dim, length")
            fields[name] = int(value)
        return cls(**fields)


# old name -> (new name, how an old value reads as a new one)
RENAMED = {
    "key_is_value": ("shared_key_value", None), "qdim": ("distinct_qdim", None), "bias": ("bias_values", None),
    "add_bias_kv": ("bias_kv", None), "add_zero_attn": ("zero_attn", None), "dropout": ("attention_dropout", None),
    "key_padding_mask": ("key_padding_mask_kinds", None), "attn_mask": ("attn_mask_kinds", None),
    "need_weights": ("returns_weights", None), "per_head_weights": ("returns_per_head_weights", None),
    "causal": ("causality", None), "causal_masks": ("masks_with_causality", None),
    "num_kv_heads": ("grouping", _kv_heads), "window": ("window_kind", _window),
}


# What a deviation's ``when`` may name: the problem's fields, the configuration's, and three derived ones.
SCOPE_FIELDS = tuple(sorted({f.name for f in dataclasses.fields(Problem)} - {"config", "seed", "input_scale"}
                            | {f.name for f in dataclasses.fields(Config)} | {"device", "layout", "dtype"}))
RENAMED_SCOPE_FIELDS = {"key_padding_mask": "key_padding_mask_kind", "attn_mask": "attn_mask_kind",
                        "causal": "causal_attn_mask", "alignment": "causal_alignment"}


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
      (a list means any of them), e.g. ``{"need_weights": True, "key_padding_mask_kind": "float"}``.
      Fields: :data:`SCOPE_FIELDS` (``dtype`` by name, e.g. ``"bfloat16"``; for a mask kind or
      ``fully_masked``, ``True`` means any and ``False`` or ``"none"`` means absent).
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
        when = {}
        for key, value in self.when.items():
            if key in RENAMED_SCOPE_FIELDS:
                warnings.warn(f"deviation of {self.law}: when names {key!r}, now {RENAMED_SCOPE_FIELDS[key]!r}",
                              DeprecationWarning, stacklevel=4)
                key = RENAMED_SCOPE_FIELDS[key]
            when[key] = value
        unknown = sorted(set(when) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"deviation of {self.law}: when names {unknown[0]!r}, which is not a problem field; "
                             f"known: {', '.join(SCOPE_FIELDS)}")
        if self.match is not None:
            try:
                re.compile(self.match)
            except (re.error, TypeError) as exc:
                raise ValueError(f"deviation of {self.law}: match={self.match!r} is not a regular expression "
                                 f"({exc})") from None
        object.__setattr__(self, "when", when)

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
        raise ValueError(f"deviation {entry!r}: should be an attnspec.Deviation or a dict with law, reason, when, "
                         "match")

    def covers(self, problem: Problem, device: str, detail: str) -> bool:
        """Whether a failure of this law on ``problem`` with this ``detail`` line is this deviation."""
        in_scope = all(_value_matches(_scope_value(problem, device, k), v) for k, v in self.when.items())
        return in_scope and (self.match is None or re.search(self.match, detail) is not None)

    def short(self) -> str:
        scope = ", ".join(f"{k}={v}" for k, v in self.when.items()) or "every problem"
        return f"{self.law} when {scope}" + (f" and the failure matches {self.match!r}" if self.match else "")


def _renamed(fields: dict, stacklevel: int = 3) -> dict:
    """``fields`` with an earlier release's names replaced by today's, each with a DeprecationWarning."""
    fields = dict(fields)
    if "mask_validation" in fields:
        value = fields.pop("mask_validation")
        warnings.warn("Capabilities(mask_validation=...) is now two fields: validates_mask_shapes and "
                      "validates_mask_dtypes", DeprecationWarning, stacklevel=stacklevel)
        fields.setdefault("validates_mask_shapes", value)
        fields.setdefault("validates_mask_dtypes", value)
    for old, (new, convert) in RENAMED.items():
        if old in fields:
            warnings.warn(f"Capabilities({old}=...) is now Capabilities({new}=...)", DeprecationWarning,
                          stacklevel=stacklevel)
            if new in fields:
                raise TypeError(f"Capabilities got both {old}= and its new name {new}=")
            value = fields.pop(old)
            fields[new] = convert(value) if convert else value
    return fields


@dataclass(frozen=True, init=False)
class Capabilities:
    """Declared support. Fields default to everything ``nn.MultiheadAttention`` does.

    Inputs and layouts:

    * ``cross_attention``: query, key and value may be distinct tensors with L != S;
      ``shared_key_value``: in cross-attention the module takes one tensor as both keys and values
      (most cross-attention modules: a ``context``), so the suite passes ``value is key``.
    * ``kdim_vdim``: key and value widths other than ``embed_dim``; ``distinct_qdim``: a query width
      other than ``embed_dim`` (``Config.qdim``).
    * ``layouts``: :data:`LAYOUTS`; ``dtypes``, ``devices``: where it runs; ``compute_dtype``: the module
      computes internally in this lower precision whatever its input (a float32 softmax), so results in
      higher-precision dtypes are held to this dtype's tolerance, and the report says so.

    Constructor arguments:

    * ``bias_values``: the values of ``bias`` it takes; ``bias_kv``: it takes ``add_bias_kv=True``;
      ``zero_attn``: ``add_zero_attn=True``; ``attention_dropout``: a dropout rate above 0.
    * ``min_heads`` / ``max_heads``: the head counts it takes; ``head_dim_multiple``: head widths are
      multiples of this (fused GPU kernels want multiples of 8); ``embed_dim_and_heads``: the constructor
      takes embed_dim and num_heads, so an indivisible pair can be given (and must be rejected).
    * ``grouping``: :data:`GROUPINGS`, the key/value head counts (``Config.num_kv_heads``) it takes for
      H heads: ``"none"`` (only H), ``"multi-query"`` (only 1), ``"one-or-all"`` (1 or H), ``"any"`` (any
      divisor). ``Wk``/``Wv`` have num_kv_heads * head_dim rows and query head h reads key/value head
      ``h // (num_heads // num_kv_heads)``.
    * ``window_kind``: :data:`WINDOW_KINDS`, the sliding windows (``Config.window = (left, right)``,
      either None: unbounded) it takes: query i sees keys ``pos - left`` to ``pos + right``, pos being i
      placed by ``causal_alignment``; ``"any"``, ``"left"`` (only ``(left, None)``, Mistral's
      ``sliding_window = left + 1`` under causality) or ``"symmetric"`` (only ``(w, w)``).
    * ``out_projection``: :data:`OUT_PROJECTIONS`: ``"always"``; ``"multi-head"``: none at one head
      (``get_weights`` gives ``Wo=None`` there); ``"never"``: the output is the concatenated heads.
    * ``rope``: the rotary embedding it applies (:class:`~attnspec.config.Rope`); ``call`` then gets the
      positions. ``decoding``: incremental decoding with a key/value cache (``new_cache``, ``decode``).
    * ``head_mixing``: talking-heads mixing of logits and weights across heads.

    Features of 2024-25 models (each changes the reference; their weights are canonical weights):

    * ``takes_softmax_scale``: the constructor takes ``Config.softmax_scale``, the logits' scale in place of
      ``head_dim ** -0.5`` (Gemma's ``query_pre_attn_scalar ** -0.5``).
    * ``takes_softcap``: the constructor takes ``Config.softcap``: scaled logits ``s`` become
      ``softcap * tanh(s / softcap)`` before any mask or bias (Gemma-2).
    * ``alibi``: ALiBi, ``-slope_h * |pos_i - j|`` added to head h's logits (queries placed by
      ``causal_alignment``), slopes the canonical weight ``alibi_slopes`` (H,) (MPT, BLOOM, Falcon-RW).
    * ``attention_sinks``: a learned logit per head joins each row's softmax denominator and takes no value,
      the canonical weight ``sinks`` (H,) (gpt-oss).
    * ``qk_norm``: queries and keys RMS-normalised before RoPE (:class:`~attnspec.config.QKNorm`), weights
      ``q_norm`` and ``k_norm`` (Qwen3, OLMo-2, Gemma-3). RoPE scaling is part of ``rope``
      (:class:`~attnspec.config.RopeScaling`).
    * ``reach``: how far the draws go (:class:`Reach`: most heads, widest head, longest sequence).

    Masks and causality:

    * ``key_padding_mask_kinds`` / ``attn_mask_kinds``: the mask dtypes it takes (:data:`MASK_DTYPES`);
      ``padding_suffix_only``: key padding only as trailing padding (length masks); ``attn_mask_3d``:
      per-sample, per-head ``(B*H, L, S)`` masks.
    * ``validates_mask_shapes`` / ``validates_mask_dtypes``: the module itself sees the masks it is given
      and rejects wrong shapes / integer dtypes. Declare False where the adapter converts masks (with
      :mod:`attnspec.masks`, which rejects them on the module's behalf): that bad-mask law is then not
      claimed.
    * ``causality``: :data:`CAUSALITIES`: ``"mask"``, only as an ``attn_mask`` (``call`` never gets
      ``is_causal``); ``"flag"``: ``call(..., is_causal=True)`` hides the future; ``"always"``: every call
      is causal (``call`` always gets ``is_causal=True``). ``masks_with_causality``: the masks the flag (or
      always-on causality) may come with (:data:`CAUSAL_MASKS`). ``causal_alignment``: where the diagonal
      sits when L != S (:data:`attnspec.config.ALIGNMENTS`).
    * ``fully_masked_rows``: :data:`FULLY_MASKED_POLICIES`, the declared output of a query row whose keys
      are all masked: ``"zeros"`` (attention contributes 0, so the row is ``out_proj.bias``: the spec's
      policy), ``"nan"``, or ``"unspecified"``.

    Results:

    * ``returns_weights``: returns attention weights when asked; ``returns_per_head_weights``: honours
      ``average_attn_weights=False``; ``gradients``: differentiable.
    * ``edge_cases``: the edge cases it supports (:data:`EDGE_CASES`); a law on one it leaves out is
      not claimed.
    * ``deviations``: known departures from the spec, each a :class:`Deviation` (or a dict of its
      fields) scoped to the problems where it applies; failures outside every scope fail.
    """

    cross_attention: bool = True
    shared_key_value: bool = False
    kdim_vdim: bool = True
    distinct_qdim: bool = False
    bias_values: tuple = (True, False)
    bias_kv: bool = True
    zero_attn: bool = True
    attention_dropout: bool = True
    layouts: tuple = LAYOUTS
    key_padding_mask_kinds: tuple = MASK_DTYPES
    padding_suffix_only: bool = False
    attn_mask_kinds: tuple = MASK_DTYPES
    attn_mask_3d: bool = True
    returns_weights: bool = True
    returns_per_head_weights: bool = True
    gradients: bool = True
    head_mixing: bool = False
    fully_masked_rows: str = "zeros"
    dtypes: tuple = ALL_DTYPES
    devices: tuple = ("cpu", "cuda")
    min_heads: int = 1
    max_heads: int | None = None
    head_dim_multiple: int = 1
    out_projection: str = "always"
    compute_dtype: torch.dtype | None = None
    validates_mask_shapes: bool = True
    validates_mask_dtypes: bool = True
    embed_dim_and_heads: bool = True
    edge_cases: tuple = EDGE_CASES
    deviations: tuple = ()
    causality: str = "mask"
    masks_with_causality: tuple = CAUSAL_MASKS
    causal_alignment: str = "top-left"
    grouping: str = "none"
    window_kind: str | None = None
    rope: Rope | None = None
    decoding: bool = False
    takes_softmax_scale: bool = False
    takes_softcap: bool = False
    alibi: bool = False
    attention_sinks: bool = False
    qk_norm: QKNorm | None = None
    reach: Reach = Reach()

    def __init__(self, **fields):
        """Keyword arguments only, by the field names (an earlier release's names warn and still work)."""
        fields = _renamed(fields)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"Capabilities has no field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        for f in dataclasses.fields(self):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            object.__setattr__(self, f.name, fields.get(f.name, default))
        self.__post_init__()

    def __getattr__(self, name):
        if name in RENAMED:  # an earlier release's name, read
            new, _ = RENAMED[name]
            warnings.warn(f"Capabilities.{name} is now Capabilities.{new}", DeprecationWarning, stacklevel=2)
            return getattr(self, new)
        raise AttributeError(f"'Capabilities' object has no attribute {name!r}")

    def __post_init__(self):
        if isinstance(self.reach, Mapping):
            object.__setattr__(self, "reach", Reach(**self.reach))
        if not isinstance(self.reach, Reach):
            raise ValueError(f"reach={self.reach!r}, but should be an attnspec.Reach (heads, head_dim, length)")
        if isinstance(self.qk_norm, Mapping):
            object.__setattr__(self, "qk_norm", QKNorm(**self.qk_norm))
        if self.qk_norm is not None and not isinstance(self.qk_norm, QKNorm):
            raise ValueError(f"qk_norm={self.qk_norm!r}, but should be None or an attnspec.QKNorm (over, eps, offset)")
        if isinstance(self.rope, Mapping):
            object.__setattr__(self, "rope", Rope(**self.rope))
        if self.rope is not None and not isinstance(self.rope, Rope):
            raise ValueError(f"rope={self.rope!r}, but should be None or an attnspec.Rope (pairing, base, fraction)")
        if isinstance(self.deviations, (Mapping, str, bytes)):
            raise ValueError(f"deviations={self.deviations!r}, but should be a list of attnspec.Deviation (or dicts "
                             "with law, reason, when, match): a deviation is scoped to part of the problem space")
        object.__setattr__(self, "deviations", tuple(Deviation.of(d) for d in self.deviations))
        for name in ("cross_attention", "shared_key_value", "kdim_vdim", "distinct_qdim", "bias_kv", "zero_attn",
                     "attention_dropout", "padding_suffix_only", "attn_mask_3d", "returns_weights",
                     "returns_per_head_weights", "gradients", "head_mixing", "validates_mask_shapes",
                     "validates_mask_dtypes", "embed_dim_and_heads", "decoding", "takes_softmax_scale",
                     "takes_softcap", "alibi", "attention_sinks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be True or False")
        choices = [("fully_masked_rows", FULLY_MASKED_POLICIES), ("out_projection", OUT_PROJECTIONS),
                   ("causality", CAUSALITIES), ("grouping", GROUPINGS), ("window_kind", WINDOW_KINDS)]
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be one of {allowed}")
        subsets = [("layouts", LAYOUTS), ("key_padding_mask_kinds", MASK_DTYPES), ("attn_mask_kinds", MASK_DTYPES),
                   ("masks_with_causality", CAUSAL_MASKS), ("edge_cases", EDGE_CASES), ("devices", ("cpu", "cuda")),
                   ("bias_values", (True, False))]
        for name, allowed in subsets:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not set(value) <= set(allowed):
                raise ValueError(f"{name}={value!r}, but should be a subset of {allowed}")
            object.__setattr__(self, name, tuple(value))
        if not self.layouts:
            raise ValueError(f"layouts={self.layouts!r}, but should be a non-empty subset of {LAYOUTS}")
        bad = [d for d in self.dtypes if d not in ALL_DTYPES]
        if bad:
            raise ValueError(f"dtypes={self.dtypes!r}: {bad[0]!r} is not one of {ALL_DTYPES}")
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        if self.compute_dtype is not None and self.compute_dtype not in ALL_DTYPES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}, but should be None or one of {ALL_DTYPES}")
        if not (isinstance(self.head_dim_multiple, int) and self.head_dim_multiple >= 1):
            raise ValueError(f"head_dim_multiple={self.head_dim_multiple!r}, but should be a positive int")
        if not (isinstance(self.min_heads, int) and self.min_heads >= 1
                and (self.max_heads is None or self.min_heads <= self.max_heads)):
            raise ValueError(f"min_heads={self.min_heads!r}, but should be an int from 1 to max_heads={self.max_heads}")
        self._warn_unreachable_masks()
        if self.shared_key_value and not self.cross_attention:
            raise ValueError("shared_key_value=True describes cross-attention, but cross_attention=False")
        check_alignment(self.causal_alignment)

    def _warn_unreachable_masks(self) -> None:
        """Warn where the mask declarations contradict each other: a mask the causal flag may come with that the
        module does not take, or (always causal) a mask it takes that may never come with causality."""
        if self.causality == "mask":
            return
        kinds = {"key_padding_mask": self.key_padding_mask_kinds, "attn_mask": self.attn_mask_kinds}
        for mask, taken in kinds.items():
            if mask in self.masks_with_causality and not taken:
                warnings.warn(f"Capabilities: masks_with_causality lists {mask!r}, but {mask}_kinds=() says the module "
                              f"takes no {mask}: it is never drawn", UserWarning, stacklevel=4)
            elif taken and mask not in self.masks_with_causality and self.causality == "always":
                warnings.warn(f"Capabilities: {mask}_kinds={taken!r}, but with causality='always' a {mask} is drawn "
                              f"only where masks_with_causality lists it, and it does not: no law will pass one; add "
                              f"{mask!r} to masks_with_causality if the module takes it", UserWarning, stacklevel=4)

    def replace(self, **changes) -> "Capabilities":
        return Capabilities(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                               **_renamed(changes, stacklevel=4)})

    @property
    def any_mask(self) -> bool:
        return bool(self.key_padding_mask_kinds or self.attn_mask_kinds)

    def kv_head_counts(self, num_heads: int) -> tuple:
        """The key/value head counts declared for ``num_heads`` query heads, largest first (:data:`GROUPINGS`)."""
        divisors = [d for d in range(num_heads, 0, -1) if num_heads % d == 0]
        return {"none": (num_heads,), "multi-query": (1,), "one-or-all": tuple(sorted({num_heads, 1}, reverse=True)),
                "any": tuple(divisors)}[self.grouping]
