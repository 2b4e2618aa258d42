"""What a law requires of an implementation, and the one answer to "is this law claimed?".

Each law declares its requirements once, as :class:`Requirement` objects (the named ones below).
A requirement knows whether capabilities hold it, the reason shown when they do not, and how it
narrows the draw. :func:`decide` combines them for one (law, capabilities, device, dtype): the
answer is a :class:`Claim`, either *not claimed* with its reasons, or the :class:`Scope` its
problems are drawn from (:func:`attnspec.strategies.problems`). The plugin, the runner and
:class:`attnspec.case.Case` all read that answer; nothing else decides a claim.

A scope holds, for each dimension of a problem, the values the draw may take. Dimensions are named
after the :class:`~attnspec.config.Problem` or :class:`~attnspec.config.Config` field they set, plus
a few the draw derives: ``masks`` (the (key padding, attention) mask kinds drawn together),
``inputs`` (``"ordinary"`` magnitudes, ``"unit"`` or ``"large"``), ``grouped`` (fewer key/value heads
than query heads), ``windowed`` (a window or none), ``extra_keys`` (add_bias_kv or add_zero_attn),
``dropout_active`` (a rate of 0.5 or none), ``gradients`` (a backward pass), ``scaled`` (a
``softmax_scale`` given), ``softcapped`` (a ``softcap`` given).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .capabilities import Capabilities
from .config import FULLY_MASKED_MODES

# The dtypes certified on each device: float16 is a GPU format (CPU float16 matmuls are slow emulations
# that few run), bfloat16 is certified on both.
DEVICE_DTYPES = {"cpu": (torch.float64, torch.float32, torch.bfloat16),
                 "cuda": (torch.float64, torch.float32, torch.bfloat16, torch.float16)}
# How a law uses its problems, which the draw must know: it reorders keys (no trailing-only padding); it
# compares no values, only whether a call raises (no low-precision floor on lengths and widths); it needs more
# queries than keys under the causal flag (under bottom-right alignment, the first rows then see no key).
FLAGS = ("permutes_keys", "compares_no_values", "more_queries_than_keys")
# What an ordinary law draws where a dimension's values are wider than that: no fully masked rows, eval
# mode, no dropout, ordinary magnitudes, and the causal flag only where the module is always causal.
DEFAULTS = {"fully_masked": (None,), "training": (False,), "dropout_active": (False,), "inputs": ("ordinary",)}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _every_value(caps: Capabilities, dtypes: tuple) -> dict:
    """Each dimension's values that the capabilities claim."""
    kpm, am = caps.key_padding_mask_kinds, caps.attn_mask_kinds
    masks = [(None, None), *[(k, None) for k in kpm], *[(None, a) for a in am], *[(k, a) for k in kpm for a in am]]
    causal = {"mask": (False,), "flag": (False, True), "always": (True,)}[caps.causality]
    return {
        "dtype": dtypes, "layout": caps.layouts,
        "self_attention": (True, False) if caps.cross_attention else (True,),
        "masks": tuple(masks), "mask_3d": (False, True) if caps.attn_mask_3d and caps.attn_mask_kinds else (False,),
        "causal_attn_mask": (False, True) if caps.attn_mask_kinds else (False,),
        "fully_masked": FULLY_MASKED_MODES if caps.any_mask else (None,),
        "need_weights": (True, False) if caps.returns_weights else (False,),
        "average_attn_weights": (True, False) if caps.returns_weights and caps.returns_per_head_weights else (True,),
        "extra_keys": (False, True) if (caps.bias_kv or caps.zero_attn) and caps.rope is None and not caps.alibi
        and caps.qk_norm is None else (False,),  # an appended key has no position and no norm
        "training": (False, True), "dropout_active": (False, True) if caps.attention_dropout else (False,),
        "inputs": ("ordinary", "unit", "large"), "distinct_qdim": (False, True) if caps.distinct_qdim else (False,),
        "is_causal": causal, "windowed": (False, True) if caps.window_kind else (False,),
        "grouped": {"none": (False,), "multi-query": (True,)}.get(caps.grouping, (False, True)),
        "gradients": (False, True) if caps.gradients else (False,),
        "scaled": (False, True) if caps.takes_softmax_scale else (False,),
        "softcapped": (False, True) if caps.takes_softcap else (False,),
    }


@dataclass(frozen=True, eq=False)
class Scope:
    """The problems a law draws on one implementation and device: each dimension's allowed values.

    Build it with :meth:`of`; narrow it with :meth:`narrowed`; :meth:`empty` says which dimension has
    no value left. ``least`` holds the smallest ``batch``, ``num_heads`` and ``length`` drawn. Scopes
    compare by identity, so that the strategies drawn from one are made once (:mod:`attnspec.strategies`).
    """

    caps: Capabilities
    device: str
    values: Mapping[str, tuple]
    least: Mapping[str, int] = field(default_factory=lambda: {"batch": 1, "num_heads": 1, "length": 1})
    explicit: frozenset = frozenset()  # dimensions a requirement has set (no longer at their default)
    flags: frozenset = frozenset()  # of FLAGS: how the law uses its problems, which the draw must know

    @classmethod
    def of(cls, caps: Capabilities, device: str = "cpu", dtypes: tuple | None = None) -> "Scope":
        """What an ordinary law draws on ``device`` in ``dtypes`` (default: every claimed dtype computable there)."""
        dtypes = tuple(d for d in (dtypes or DEVICE_DTYPES[device]) if d in caps.dtypes)
        every = _every_value(caps, dtypes)
        values = {dim: tuple(v for v in vs if v in DEFAULTS.get(dim, vs)) for dim, vs in every.items()}
        values["is_causal"] = (caps.causality == "always",)
        return cls(caps, device, values, {"batch": 1, "num_heads": caps.min_heads, "length": 1})

    @property
    def max_heads(self) -> int:
        """The most heads drawn: the declared reach, within the declared max_heads."""
        return min(self.caps.reach.heads, self.caps.max_heads or self.caps.reach.heads)

    def allowed(self, dim: str) -> tuple:
        """The values of ``dim`` this scope draws."""
        return self.values[dim]

    def claimed(self, dim: str) -> tuple:
        """Every value of ``dim`` the capabilities claim, for a law that walks a dimension itself (both
        ``need_weights`` paths, a backward pass where ``gradients`` are claimed, the float masks accepted)."""
        return _every_value(self.caps, self.values["dtype"])[dim]

    def narrowed(self, **constraints) -> "Scope":
        """This scope with each named dimension limited to the values given (one value, or a tuple of them).

        ``min_batch``, ``min_heads``, ``min_length`` raise the least value drawn; ``has_mask``,
        ``key_padding_mask_kind``, ``attn_mask_kind`` limit the masks drawn; a name of :data:`FLAGS` set to
        True adds that flag.
        """
        values, least, explicit = dict(self.values), dict(self.least), set(self.explicit)
        every = _every_value(self.caps, self.values["dtype"])
        flags = self.flags | {name for name in FLAGS if constraints.pop(name, False)}
        for name, wanted in constraints.items():
            if name.startswith("min_"):
                key = {"min_batch": "batch", "min_heads": "num_heads", "min_length": "length"}[name]
                least[key] = max(least[key], wanted)
                continue
            wanted = wanted if isinstance(wanted, tuple) else (wanted,)
            if name in ("has_mask", "key_padding_mask_kind", "attn_mask_kind"):
                index = {"key_padding_mask_kind": 0, "attn_mask_kind": 1}.get(name)
                keep = (lambda m: (m != (None, None)) in wanted) if index is None else (lambda m: m[index] in wanted)
                values["masks"] = tuple(m for m in values["masks"] if keep(m))
                continue
            if name not in values:
                raise ValueError(f"{name}={wanted!r}: not a dimension of the draw; known: "
                                 f"{', '.join(sorted([*values, 'has_mask', 'key_padding_mask_kind', 'attn_mask_kind']))}")
            base = values[name] if name in explicit else every[name]
            values[name] = tuple(v for v in base if v in wanted)
            explicit.add(name)
        if "permutes_keys" in flags and self.caps.padding_suffix_only:
            values["masks"] = tuple(m for m in values["masks"] if m[0] is None)
        if "more_queries_than_keys" in flags:  # S < L needs distinct queries and keys, and room for both
            least["length"] = max(least["length"], 2)
            values["causal_attn_mask"] = tuple(v for v in values["causal_attn_mask"] if not v)
        return dataclasses.replace(self, values=_consistent(values), least=least,
                                   explicit=frozenset(explicit), flags=frozenset(flags))

    def has(self, flag: str) -> bool:
        """Whether a requirement set ``flag`` (:data:`FLAGS`)."""
        return flag in self.flags

    def mask_options(self, is_causal: bool) -> tuple:
        """The (key padding, attention) mask kinds that may be drawn together with the causal flag or without."""
        if not is_causal:
            return self.values["masks"]
        kinds = self.caps.masks_with_causality
        return tuple(m for m in self.values["masks"] if (m[0] is None or "key_padding_mask" in kinds)
                     and (m[1] is None or "attn_mask" in kinds))

    def empty(self) -> str | None:
        """The dimension left with no value to draw, or None if a problem can be drawn."""
        for dim, vs in self.values.items():
            if not vs:
                return dim
        if not any(self.mask_options(flag) for flag in self.values["is_causal"]):
            return "masks"
        if self.least["num_heads"] > self.max_heads:
            return "num_heads"
        if self.values["grouped"] == (True,) and self.max_heads < 2:
            return "grouped"
        if self.least["batch"] > 1 and self.values["layout"] == ("unbatched",):
            return "layout"
        return None

    def excludes(self, problem) -> list[str]:
        """What of ``problem`` lies outside this scope, in words (empty if the scope contains it).

        The inverse of drawing: :func:`attnspec.strategies.problems` draws only problems this finds nothing in."""
        caps, c, p = self.caps, problem.config, problem
        allowed = self.values
        checks = [
            (p.dtype not in allowed["dtype"], f"dtype {dtype_name(p.dtype)}"),
            (p.layout not in allowed["layout"], f"{p.layout} input"),
            (p.self_attention not in allowed["self_attention"], "cross-attention" if not p.self_attention
             else "self-attention"),
            ((p.key_padding_mask_kind, p.attn_mask_kind) not in self.mask_options(p.is_causal),
             f"masks {p.key_padding_mask_kind} / {p.attn_mask_kind}"),
            (p.mask_3d not in allowed["mask_3d"], "a 3-D attn_mask"),
            (p.causal_attn_mask not in allowed["causal_attn_mask"], "a causal attn_mask"),
            (p.fully_masked not in allowed["fully_masked"], f"fully_masked={p.fully_masked}"),
            (p.need_weights not in allowed["need_weights"], f"need_weights={p.need_weights}"),
            (p.need_weights and p.average_attn_weights not in allowed["average_attn_weights"], "per-head weights"),
            (bool(c.extra_keys) not in allowed["extra_keys"] or (c.add_bias_kv and not caps.bias_kv)
             or (c.add_zero_attn and not caps.zero_attn), "add_bias_kv / add_zero_attn"),
            (p.training not in allowed["training"], f"training={p.training}"),
            ((c.dropout > 0) not in allowed["dropout_active"], f"dropout={c.dropout}"),
            ((c.qdim is not None) not in allowed["distinct_qdim"], "qdim"),
            ((c.kdim is not None or c.vdim is not None) and not caps.kdim_vdim, "kdim/vdim"),
            (c.bias not in caps.bias_values, f"bias={c.bias}"),
            (p.is_causal not in allowed["is_causal"], f"is_causal={p.is_causal}"),
            ((c.window is not None) not in allowed["windowed"] or not _window_fits(caps.window_kind, c.window),
             f"window={c.window}"),
            (c.grouped not in allowed["grouped"] or c.kv_heads not in caps.kv_head_counts(c.num_heads),
             f"num_kv_heads={c.num_kv_heads}"),
            (c.num_heads < self.least["num_heads"] or (caps.max_heads is not None and c.num_heads > caps.max_heads),
             f"num_heads={c.num_heads}"),
            (c.head_dim % caps.head_dim_multiple != 0 or (caps.rope is not None and not caps.rope.fits(c.head_dim)),
             f"head_dim={c.head_dim}"),
            (p.batched and p.batch < self.least["batch"], f"batch={p.batch}"),
            (min(p.L, p.S) < self.least["length"], f"L={p.L}, S={p.S}"),
            (p.rope != caps.rope, "no rotary positions" if p.rope is None else p.rope.short()),
            (p.qk_norm != caps.qk_norm, f"qk_norm={p.qk_norm}"),
            ((c.softmax_scale is not None) not in allowed["scaled"], f"softmax_scale={c.softmax_scale}"),
            ((c.softcap is not None) not in allowed["softcapped"], f"softcap={c.softcap}"),
            (not p.self_attention and p.key_is_value != caps.shared_key_value,
             "keys and values as one tensor" if p.key_is_value else "distinct key and value tensors"),
            (p.positional and p.L != p.S and p.causal_alignment != caps.causal_alignment,
             f"{p.causal_alignment} alignment"),
        ]
        return [why for failed, why in checks if failed]

    def short(self) -> str:
        """The dimensions that are not at every claimed value, for messages."""
        every = _every_value(self.caps, self.values["dtype"])
        parts = [f"{dim}={vs}" for dim, vs in self.values.items() if vs != every.get(dim)]
        parts += [f"at least {n} {k}" for k, n in self.least.items() if n > 1]
        return ", ".join(parts) or "every claimed problem"


def _window_fits(kind: str | None, window) -> bool:
    """Whether ``window`` has the declared kind's form (``"left"``: ``(left, None)``; ``"symmetric"``: ``(w, w)``)."""
    if window is None:
        return True
    return {"left": window[1] is None, "symmetric": window[0] == window[1] and window[0] is not None}.get(kind, True)


def _consistent(values: dict) -> dict:
    """Values that imply each other: a mask shape or a fully masked row needs a mask of that kind."""
    masks = values["masks"]
    if values["mask_3d"] == (True,) or values["causal_attn_mask"] == (True,):
        masks = tuple(m for m in masks if m[1] is not None)
    if None not in values["fully_masked"]:  # a row masked on purpose: by a mask, never the causal one
        masks = tuple(m for m in masks if m != (None, None))
        values["causal_attn_mask"] = tuple(v for v in values["causal_attn_mask"] if not v)
    if values["is_causal"] == (True,) and values["causal_attn_mask"] == (True,):
        masks = ()  # the flag and a causal attention mask are never drawn together
    if values["need_weights"] == (False,):
        values["average_attn_weights"] = tuple(v for v in values["average_attn_weights"] if v) or (True,)
    return {**values, "masks": masks}


@dataclass(frozen=True)
class Requirement:
    """Something a law needs: ``reason`` is shown ("not claimed: needs <reason>") when it does not hold.

    It holds when ``claims(capabilities)`` is true and its ``draw`` constraints (:meth:`Scope.narrowed`)
    leave a problem to draw; it narrows a law's scope by those constraints. ``feature``: it names a feature
    beyond ``nn.MultiheadAttention``'s (grouped heads, a window, RoPE, ALiBi, ...): where a module fails many
    laws, the report lists the laws that name a feature first, since they say where the bug is.
    """

    reason: str
    claims: Callable[[Capabilities], bool] | None = None
    draw: Mapping[str, object] = field(default_factory=dict)
    feature: bool = False  # it names a feature beyond nn.MultiheadAttention's (a law naming one is listed first)

    def holds(self, caps: Capabilities, device: str = "cpu") -> bool:
        if self.claims is not None and not self.claims(caps):
            return False
        return not self.draw or self.narrow(scope_of(caps, device)).empty() is None

    def narrow(self, scope: Scope) -> Scope:
        return scope.narrowed(**self.draw) if self.draw else scope


def draws(**constraints) -> Requirement:
    """Constraints on the draw that any implementation can meet (e.g. ``draws(min_length=2)``)."""
    return Requirement("", draw=constraints)


@dataclass(frozen=True)
class Claim:
    """The answer of :func:`decide`: the scope to draw from, or the reasons the law is not claimed."""

    scope: Scope | None
    reasons: tuple = ()

    @property
    def claimed(self) -> bool:
        return self.scope is not None

    def why(self) -> str:
        return "not claimed: needs " + ", ".join(self.reasons)


def contract_of(caps) -> str:
    """``"module"`` for :class:`~attnspec.capabilities.Capabilities`, ``"kernel"`` for a kernel's
    (:class:`attnspec.kernel.KernelCapabilities`): which laws apply, and how their problems are drawn."""
    return getattr(caps, "contract", "module")


def device_dtypes(caps, device: str) -> tuple:
    """The dtypes certified on ``device`` under the contract of ``caps`` (kernels: float16 on the CPU too)."""
    if contract_of(caps) == "kernel":
        from .kernel.declaration import DEVICE_DTYPES as KERNEL_DTYPES
        return KERNEL_DTYPES[device]
    return DEVICE_DTYPES[device]


def scope_of(caps, device: str = "cpu", dtypes: tuple | None = None):
    """What an ordinary law draws for ``caps``: a :class:`Scope`, or a kernel's
    :class:`~attnspec.kernel.scope.KernelScope` (the same interface, other dimensions)."""
    if contract_of(caps) == "kernel":
        from .kernel.scope import KernelScope
        return KernelScope.of(caps, device, dtypes)
    return Scope.of(caps, device, dtypes)


def decide(law, caps: Capabilities, device: str = "cpu", dtype: torch.dtype | None = None) -> Claim:
    """Whether ``law`` is claimed by ``caps`` on ``device`` in ``dtype`` (None: every dtype it can run in),
    and if so the :class:`Scope` its problems are drawn from."""
    if getattr(law, "contract", "module") != contract_of(caps):  # its requirements read the other contract's fields
        return Claim(None, (f"the {getattr(law, 'contract', 'module')} contract (this is a {contract_of(caps)})",))
    reasons = []
    if device not in caps.devices:
        reasons.append(f"device {device}")
    if device not in law.devices:
        reasons.append(f"a {' or '.join(d.upper() if d == 'cuda' else d for d in law.devices)} device "
                       "(this law compares it with the CPU)")
    if dtype is not None and dtype not in caps.dtypes:
        reasons.append(f"dtype {dtype_name(dtype)}")
    elif dtype is not None and dtype not in law.dtypes:
        reasons.append(f"a dtype other than {dtype_name(dtype)} (attnspec cannot decide this law there: its "
                       "tolerance reaches the spread of the values compared, see attnspec.tolerances)")
    dtypes = (dtype,) if dtype is not None else tuple(d for d in device_dtypes(caps, device) if d in law.dtypes)
    scope = scope_of(caps, device, dtypes)
    if scope.empty() == "dtype" and not reasons:
        reasons.append("float64 or float32 (attnspec cannot decide this law in lower precision, see "
                       "attnspec.tolerances)")
    for requirement in law.requires:
        if requirement.claims is not None and not requirement.claims(caps):
            reasons.append(requirement.reason)
            continue
        narrowed = requirement.narrow(scope)
        if narrowed.empty() is not None:
            reasons.append(requirement.reason or f"a problem with {narrowed.empty()} drawn as the law asks")
            continue
        scope = narrowed
    return Claim(None, tuple(dict.fromkeys(reasons))) if reasons else Claim(scope)


def _batched(c: Capabilities) -> bool:
    return any(lay != "unbatched" for lay in c.layouts)


# -- the requirements laws name ------------------------------------------------------------------
MASKED = Requirement("a key_padding_mask or attn_mask", draw={"has_mask": True})
PADDED = Requirement("a key_padding_mask", draw={"key_padding_mask_kind": ("bool", "float")})
ATTN_MASKED = Requirement("an attn_mask", draw={"attn_mask_kind": ("bool", "float")})
FLOAT_ATTN_MASK = Requirement("a float attn_mask", draw={"attn_mask_kind": "float", "key_padding_mask_kind": None,
                                                         "extra_keys": False})
FLOAT_PADDING = Requirement("a float key_padding_mask and a 3-D float attn_mask",
                            lambda c: "float" in c.attn_mask_kinds and c.attn_mask_3d,
                            draw={"key_padding_mask_kind": "float", "attn_mask_kind": None})
BOOL_AND_FLOAT_MASKS = Requirement(
    "bool and float masks",
    lambda c: {"bool", "float"} <= set(c.key_padding_mask_kinds) or {"bool", "float"} <= set(c.attn_mask_kinds),
    draw={"has_mask": True, "key_padding_mask_kind": (None, "bool"), "attn_mask_kind": (None, "bool")})
MASK_3D = Requirement("a 3-D attn_mask", draw={"mask_3d": True})
CAUSAL_ATTN_MASK = Requirement("an attn_mask", draw={"causal_attn_mask": True, "min_length": 2})
FULLY_MASKED = Requirement("fully masked rows", lambda c: "fully masked rows" in c.edge_cases,
                           draw={"fully_masked": ("batch", "row", "head"), "extra_keys": False})
FULLY_MASKED_POLICY = Requirement("a fully-masked-row policy", lambda c: c.fully_masked_rows != "unspecified")
EMPTY_SEQUENCES = Requirement("empty sequences", lambda c: "empty sequences" in c.edge_cases)
LARGE_INPUTS = Requirement("large inputs", lambda c: "large inputs" in c.edge_cases, draw={"inputs": "large"})
UNIT_INPUTS = draws(inputs="unit")
RETURNS_WEIGHTS = Requirement("returned attention weights", draw={"need_weights": True})
PER_HEAD_WEIGHTS = Requirement("per-head weights", lambda c: c.returns_weights and c.returns_per_head_weights,
                               draw={"need_weights": True})
PER_HEAD_WEIGHTS_DRAWN = Requirement("per-head weights", draw={"need_weights": True, "average_attn_weights": False})
GRADIENTS = Requirement("gradients", lambda c: c.gradients)
CROSS_ATTENTION = Requirement("cross-attention", draw={"self_attention": False})
DISTINCT_KEY_VALUE = Requirement("distinct key and value tensors", lambda c: not c.shared_key_value,
                                 draw={"self_attention": False})
SELF_ATTENTION = draws(self_attention=True)
BATCHED = Requirement("batched input", _batched, draw={"layout": ("seq_first", "batch_first")})
SEVERAL_ITEMS = Requirement("batched input", _batched, draw={"layout": ("seq_first", "batch_first"),
                                                             "min_batch": 2})
UNBATCHED_AND_BATCHED = Requirement("unbatched and batched input",
                                    lambda c: "unbatched" in c.layouts and _batched(c), draw={"layout": "unbatched"})
BOTH_BATCH_LAYOUTS = Requirement("seq_first and batch_first", lambda c: {"seq_first", "batch_first"} <= set(c.layouts),
                                 draw={"layout": "seq_first"})
SEVERAL_HEADS = Requirement("several heads", draw={"min_heads": 2})
NO_HEAD_MIXING = Requirement("no head mixing", lambda c: not c.head_mixing)
HEADS_SPLIT_BEFORE_NORM = Requirement("heads that are normalised on their own (no QK-norm over the whole projection)",
                                    lambda c: c.qk_norm is None or c.qk_norm.over == "head")
TORCH_API = Requirement("nn.MultiheadAttention's API",
                        lambda c: not c.head_mixing and c.causality != "always" and c.rope is None and not c.alibi
                        and not c.attention_sinks and c.qk_norm is None,
                        draw={"distinct_qdim": False, "is_causal": False, "windowed": False, "grouped": False,
                              "scaled": False, "softcapped": False})
ORDER_FREE = Requirement("attention that can be order-free (not always causal)", lambda c: c.causality != "always",
                         draw={"is_causal": False, "windowed": False})
POSITION_FREE = Requirement("position-free attention (no RoPE or ALiBi: logits depend on positions)",
                            lambda c: c.rope is None and not c.alibi)
PERMUTES_KEYS = draws(permutes_keys=True)
VALIDATION = draws(compares_no_values=True)
DROPOUT = Requirement("dropout", draw={"dropout_active": True})
TRAINING_DROPOUT = Requirement("dropout", draw={"dropout_active": True, "training": True})
# The causal flag drawn beside what else a law draws, where it is claimed (a module may raise only for the flag
# with a mask and dropout in training).
WITH_OR_WITHOUT_FLAG = draws(is_causal=(False, True))
VALIDATES_MASK_SHAPES = Requirement("masks whose shapes the module checks itself",
                                    lambda c: c.validates_mask_shapes, draw={"has_mask": True})
VALIDATES_MASK_DTYPES = Requirement("masks whose dtypes the module checks itself",
                                    lambda c: c.validates_mask_dtypes, draw={"has_mask": True})
EMBED_DIM_AND_HEADS = Requirement("embed_dim and num_heads in the constructor", lambda c: c.embed_dim_and_heads)
CAUSAL_FLAG = Requirement("the causal flag", draw={"is_causal": True, "min_length": 2}, feature=True)
CAUSAL_FLAG_WITH_PADDING = Requirement(
    "the causal flag with a key_padding_mask", lambda c: "key_padding_mask" in c.masks_with_causality,
    draw={"is_causal": True, "min_length": 2, "key_padding_mask_kind": ("bool", "float"), "attn_mask_kind": None}, feature=True)
CAUSAL_FLAG_WITH_ATTN_MASK = Requirement(
    "the causal flag with an attn_mask", lambda c: "attn_mask" in c.masks_with_causality,
    draw={"is_causal": True, "min_length": 2, "attn_mask_kind": ("bool", "float"), "key_padding_mask_kind": None}, feature=True)
CAUSAL_FLAG_ALONE = draws(has_mask=False)
MORE_QUERIES_THAN_KEYS = Requirement(
    "more queries than keys (cross-attention; under bottom-right alignment, rows that see no key: fully masked rows)",
    lambda c: c.causal_alignment == "top-left" or "fully masked rows" in c.edge_cases,
    draw={"self_attention": False, "more_queries_than_keys": True}, feature=True)
GROUPED = Requirement("grouped-query heads (num_kv_heads < num_heads)", draw={"grouped": True}, feature=True)
GROUPED_OR_NOT = Requirement("grouped-query heads, and as many key/value heads as query heads",
                             lambda c: c.grouping in ("one-or-all", "any"), draw={"grouped": True}, feature=True)
WINDOWED = Requirement("a sliding window", draw={"windowed": True, "min_length": 2}, feature=True)
WINDOW_ABSENT = Requirement("a sliding window", lambda c: c.window_kind is not None, draw={"windowed": False}, feature=True)
ROPE = Requirement("rotary positions (RoPE)", lambda c: c.rope is not None, feature=True)
# Dynamic NTK scaling rescales every frequency once a call reaches past the trained context: a shifted
# position, or a decoding step, changes every rotation, so neither law holds for it.
RELATIVE_ROPE = Requirement("rotary positions (RoPE) without dynamic scaling",
                            lambda c: c.rope is not None and (c.rope.scaling is None or c.rope.scaling.kind != "dynamic"), feature=True)
ROPE_SCALED = Requirement("RoPE scaling", lambda c: c.rope is not None and c.rope.scaling is not None,
                          draw={"min_length": 2}, feature=True)
CUSTOM_SCALE = Requirement("a softmax_scale argument", draw={"scaled": True}, feature=True)
SOFTCAP = Requirement("a softcap argument", draw={"softcapped": True}, feature=True)
ALIBI = Requirement("ALiBi", lambda c: c.alibi, draw={"min_length": 2}, feature=True)
SINKS = Requirement("attention sinks", lambda c: c.attention_sinks, feature=True)
QK_NORM = Requirement("QK-norm", lambda c: c.qk_norm is not None, feature=True)
NO_SINKS = Requirement("weights that sum to one (no attention sinks)", lambda c: not c.attention_sinks)
DECODING = Requirement("incremental decoding (new_cache and decode) of batched self-attention",
                       lambda c: c.decoding and _batched(c) and (c.rope is None or c.rope.scaling is None
                                                                 or c.rope.scaling.kind != "dynamic"),
                       draw={"self_attention": True, "layout": ("seq_first", "batch_first"), "has_mask": False,
                             "need_weights": False, "min_length": 2}, feature=True)
CPU_AND_CUDA = Requirement("cpu and cuda", lambda c: {"cpu", "cuda"} <= set(c.devices),
                           draw={"fully_masked": FULLY_MASKED_MODES})


def named() -> dict[str, Requirement]:
    """Every requirement above, by its name in this module (for documentation and tests)."""
    return {name: value for name, value in globals().items() if isinstance(value, Requirement)}
