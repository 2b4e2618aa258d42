"""What a check runs on: a module configuration and one drawn problem.

A :class:`Config` holds the constructor arguments of ``nn.MultiheadAttention`` (plus ``qdim``,
``num_kv_heads`` and ``window``, for modules beyond it). A :class:`Problem` is one call: the config,
the shapes, the masks, the flags, the dtype and the seed from which every tensor value is
generated. Hypothesis draws problems (:mod:`attnspec.strategies`); tensors are made from the seed
on the CPU and moved, so a failure replays identically on any device.

Both print only what differs from their defaults, so a repro names the few fields that matter::

    Problem(Config(4, 2, batch_first=True), batch=1, L=2, S=3, need_weights=False, seed=7)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

MASK_KINDS = (None, "bool", "float")
FULLY_MASKED_MODES = (None, "batch", "row", "head")
# Where the causal diagonal (and a window's centre) sits when L != S: query i is at key position i
# ("top-left", SDPA's is_causal) or i + S - L ("bottom-right", FlashAttention's causal: the last query
# sees every key). They agree when L == S.
ALIGNMENTS = ("top-left", "bottom-right")
# How rotary position embeddings pair the features they rotate: feature i with i + r/2 ("rotate_half": GPT-NeoX,
# HF Llama) or 2i with 2i + 1 ("interleaved": GPT-J, Meta's original Llama, RoFormer).
ROPE_PAIRINGS = ("rotate_half", "interleaved")
# How a long-context model rescales rotary frequencies (Hugging Face's rope_type names).
ROPE_SCALINGS = ("linear", "dynamic", "llama3", "yarn")
# What QK-norm normalises: each head's query and key (Qwen3, Gemma-3) or the whole projection before the head
# split (OLMo-2).
QK_NORM_OVER = ("head", "all")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are rescaled for long contexts (Hugging Face's ``rope_scaling``), each pair's
    frequency ``f_i = base ** (-2i / r)`` becoming:

    * ``"linear"``: ``f_i / factor`` (positions interpolated).
    * ``"dynamic"`` (dynamic NTK): where the call reaches a position ``n >= original_max_positions``, the
      base becomes ``base * (factor * (n + 1) / original_max_positions - (factor - 1)) ** (r / (r - 2))``.
    * ``"llama3"`` (Llama 3.1): with wavelength ``w_i = 2 pi / f_i``, ``low = original_max_positions /
      low_freq_factor`` and ``high = original_max_positions / high_freq_factor``: ``f_i`` where ``w_i < high``,
      ``f_i / factor`` where ``w_i > low``, and between them ``(1 - t) f_i / factor + t f_i`` with
      ``t = (original_max_positions / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor)``.
    * ``"yarn"``: pairs ``i`` below ``lo`` keep ``f_i``, above ``hi`` take ``f_i / factor``, and a linear ramp
      blends them between, where ``lo = floor(d(beta_fast))``, ``hi = ceil(d(beta_slow))`` (not rounded where
      ``truncate=False``, as gpt-oss ships it; within 0 and ``r - 1``), ``d(b) = r ln(original_max_positions /
      (2 pi b)) / (2 ln base)``; cos and sin are multiplied by ``attention_factor`` (default ``0.1 ln(factor) + 1``).
    """

    kind: str
    factor: float
    original_max_positions: int = 8192
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.kind not in ROPE_SCALINGS:
            raise ValueError(f"rope scaling kind={self.kind!r}, but should be one of {ROPE_SCALINGS}")
        if not (_number(self.factor) and 1 <= self.factor < float("inf")):
            raise ValueError(f"rope scaling factor={self.factor!r}, but should be a finite number >= 1")
        if not (isinstance(self.original_max_positions, int) and self.original_max_positions >= 1):
            raise ValueError(f"rope scaling original_max_positions={self.original_max_positions!r}, but should be "
                             "a positive int (the context length the model was trained for)")
        if self.kind == "llama3" and not (_number(self.low_freq_factor) and _number(self.high_freq_factor)
                                          and 0 < self.low_freq_factor < self.high_freq_factor):
            raise ValueError(f"rope scaling low_freq_factor={self.low_freq_factor!r}, high_freq_factor="
                             f"{self.high_freq_factor!r}, but should be numbers with 0 < low < high")
        if not isinstance(self.truncate, bool):
            raise ValueError(f"rope scaling truncate={self.truncate!r}, but should be True or False")
        if self.attention_factor is not None and not (_number(self.attention_factor) and self.attention_factor > 0):
            raise ValueError(f"rope scaling attention_factor={self.attention_factor!r}, but should be None or > 0")
        object.__setattr__(self, "factor", float(self.factor))

    def short(self) -> str:
        return f"{self.kind} x{self.factor:g}"


@dataclass(frozen=True)
class QKNorm:
    """RMS normalisation of queries and keys before RoPE and the product (Qwen3, OLMo-2, Gemma-3).

    ``x / sqrt(mean(x ** 2) + eps) * (offset + weight)`` over each head's features (``over="head"``, weights
    ``q_norm``/``k_norm`` of head_dim) or over the whole projection before the head split (``over="all"``,
    weights of ``E`` and ``Ekv``); ``offset=1`` where the weight is stored as ``weight - 1`` (Gemma). The weights
    are canonical weights (:class:`~attnspec.weights.CanonicalWeights`, ``q_norm``, ``k_norm``)."""

    over: str = "head"
    eps: float = 1e-6
    offset: float = 0.0

    def __post_init__(self):
        if self.over not in QK_NORM_OVER:
            raise ValueError(f"qk_norm over={self.over!r}, but should be one of {QK_NORM_OVER}")
        if not (_number(self.eps) and 0 <= self.eps < 1):
            raise ValueError(f"qk_norm eps={self.eps!r}, but should be a number in [0, 1)")
        if not _number(self.offset):
            raise ValueError(f"qk_norm offset={self.offset!r}, but should be a number (0, or 1 as Gemma stores it)")


@dataclass(frozen=True)
class Rope:
    """Rotary position embeddings as a module applies them to queries and keys, per head, before scaling.

    * ``pairing``: :data:`ROPE_PAIRINGS`.
    * ``base``: the frequency base (10000 in most models): pair i turns by ``position * base ** (-2i / r)``.
    * ``fraction``: the leading fraction of each head's features rotated, ``r = int(head_dim * fraction)``
      (GPT-NeoX's ``rotary_pct``, HF's ``partial_rotary_factor``); the rest pass unchanged.
    """

    pairing: str = "rotate_half"
    base: float = 10000.0
    fraction: float = 1.0
    scaling: RopeScaling | None = None

    def __post_init__(self):
        if isinstance(self.scaling, dict):
            object.__setattr__(self, "scaling", RopeScaling(**self.scaling))
        if self.scaling is not None and not isinstance(self.scaling, RopeScaling):
            raise ValueError(f"rope scaling={self.scaling!r}, but should be None or an attnspec.RopeScaling")
        if self.pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope pairing={self.pairing!r}, but should be one of {ROPE_PAIRINGS}")
        if not (_number(self.base) and 1 < self.base < float("inf")):
            raise ValueError(f"rope base={self.base!r}, but should be a finite number > 1 (10000 in most models)")
        if not (_number(self.fraction) and 0 < self.fraction <= 1):
            raise ValueError(f"rope fraction={self.fraction!r}, but should be in (0, 1]: the leading fraction "
                             "of each head's features that is rotated")
        object.__setattr__(self, "base", float(self.base))
        object.__setattr__(self, "fraction", float(self.fraction))

    def rotated(self, head_dim: int) -> int:
        """How many leading features of a head of ``head_dim`` are rotated: ``int(head_dim * fraction)``."""
        return int(head_dim * self.fraction)

    def fits(self, head_dim: int) -> bool:
        """Whether heads of ``head_dim`` rotate an even, non-zero number of features (at least 4 under dynamic
        scaling, whose base grows by a power ``r / (r - 2)``)."""
        r = self.rotated(head_dim)
        least = 4 if self.scaling is not None and self.scaling.kind == "dynamic" else 2
        return r >= least and r % 2 == 0

    def short(self) -> str:
        return (f"rope({self.pairing}, base={self.base:g}" + (f", fraction={self.fraction:g}" if self.fraction != 1
                                                               else "")
                + (f", {self.scaling.short()}" if self.scaling is not None else "") + ")")


def _non_default(obj, positional: tuple = (), skip: tuple = ()) -> str:
    """``Name(a, b, field=value, ...)``: the positional fields, then every field that differs from its default
    (those in ``skip`` left out: derived from others)."""
    args = [repr(getattr(obj, name)) for name in positional]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in positional or f.name in skip or (f.default is not dataclasses.MISSING and value == f.default
                                    and type(value) is type(f.default)):
            continue
        args.append(f"{f.name}={_repr(value)}")
    return f"{type(obj).__name__}({', '.join(args)})"


def _repr(value) -> str:
    return str(value) if isinstance(value, torch.dtype) else repr(value)


@dataclass(frozen=True)
class Config:
    """Constructor arguments, named as in ``torch.nn.MultiheadAttention``."""

    embed_dim: int
    num_heads: int
    bias: bool = True
    kdim: int | None = None
    vdim: int | None = None
    qdim: int | None = None
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    dropout: float = 0.0
    batch_first: bool = False
    num_kv_heads: int | None = None
    window: tuple | None = None
    softmax_scale: float | None = None
    softcap: float | None = None

    def __post_init__(self):
        for name in ("softmax_scale", "softcap"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and 0 < value < float("inf")):
                raise ValueError(f"{name}={value!r}, but should be None or a positive finite number")
        if self.num_kv_heads is not None:
            if not (isinstance(self.num_kv_heads, int) and self.num_kv_heads >= 1
                    and isinstance(self.num_heads, int) and self.num_heads % self.num_kv_heads == 0):
                raise ValueError(f"num_kv_heads={self.num_kv_heads!r}, but should be a positive int dividing "
                                 f"num_heads={self.num_heads!r} (1 is multi-query attention)")
        if self.window is not None:
            object.__setattr__(self, "window", check_window(self.window))

    def __repr__(self) -> str:
        return _non_default(self, ("embed_dim", "num_heads"))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def scale(self) -> float:
        """The logits' scale: ``softmax_scale``, or ``head_dim ** -0.5`` when not given."""
        return self.softmax_scale if self.softmax_scale is not None else self.head_dim ** -0.5

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``num_kv_heads``, or ``num_heads`` when not given (ordinary multi-head attention)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def grouped(self) -> bool:
        """Fewer key/value heads than query heads (grouped-query or multi-query attention)."""
        return self.kv_heads != self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections: ``kv_heads * head_dim``."""
        return self.kv_heads * self.head_dim

    @property
    def q_in(self) -> int:
        return self.qdim if self.qdim is not None else self.embed_dim

    @property
    def k_in(self) -> int:
        return self.kdim if self.kdim is not None else self.embed_dim

    @property
    def v_in(self) -> int:
        return self.vdim if self.vdim is not None else self.embed_dim

    @property
    def extra_keys(self) -> int:
        """Keys appended after the S real ones (``bias_k``, then the zero key)."""
        return int(self.add_bias_kv) + int(self.add_zero_attn)

    def short(self) -> str:
        """``E=4, H=2`` and every other field that differs from its default."""
        parts = [f"E={self.embed_dim}", f"H={self.num_heads}"]
        for f in dataclasses.fields(self)[2:]:
            value = getattr(self, f.name)
            if f.name != "batch_first" and value != f.default:
                parts.append(f"{f.name}={value}")
        return ", ".join(parts)


def check_window(window) -> tuple:
    """``window`` as a ``(left, right)`` tuple, or ValueError naming it.

    Query i (at key position ``pos``, see :data:`ALIGNMENTS`) sees keys ``pos - left`` to
    ``pos + right``; ``None`` leaves that side unbounded.
    """
    ok = isinstance(window, (tuple, list)) and len(window) == 2 and all(
        w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 0) for w in window)
    if not ok:
        raise ValueError(f"window={window!r}, but should be (left, right): each a non-negative int or None "
                         "(unbounded)")
    return tuple(window)


def check_alignment(alignment) -> str:
    if alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment={alignment!r}, but should be one of {ALIGNMENTS}")
    return alignment


@dataclass(frozen=True)
class Problem:
    """One call of an attention module, fully determined by its fields.

    * ``batch``: the batch size, or None for unbatched input; ``L`` queries, ``S`` keys.
    * ``self_attention``: the same tensor object is passed as query, key and value (then ``S == L``);
      ``key_is_value``: one tensor is passed as both key and value (cross-attention with shared keys
      and values).
    * ``key_padding_mask_kind`` / ``attn_mask_kind``: :data:`MASK_KINDS`, the dtype of each mask passed
      (None: no such mask); ``suffix_padding``: only trailing keys are padded (length masks);
      ``mask_3d``: the attention mask is ``(B*H, L, S)``, row ``b*H + h``; ``causal_attn_mask``: the
      attention mask is the top-left causal mask.
    * ``fully_masked``: :data:`FULLY_MASKED_MODES`, query rows whose keys are all masked on purpose
      (``"batch"``: a whole batch item's keys, ``"row"``: one query row, ``"head"``: one row of one head).
    * ``need_weights``, ``average_attn_weights``: the call's flags; ``training``: train mode.
    * ``input_scale``: queries and keys are multiplied by it, to reach large logits.
    * ``is_causal``: the causal flag is passed (``Adapter.call(..., is_causal=True)``); ``causal_alignment``
      (:data:`ALIGNMENTS`) places the causal mask and the configuration's window when L != S.
    * ``rope``: the rotary embedding applied (:class:`Rope`), keys at positions ``position_offset + j``
      (:meth:`position_ids`); ``qk_norm``: the normalisation of queries and keys (:class:`QKNorm`).
    * ``seed``: every tensor value is generated from it.
    """

    config: Config
    batch: int | None
    L: int
    S: int
    dtype: torch.dtype = torch.float64
    self_attention: bool = False
    key_is_value: bool = False
    key_padding_mask_kind: str | None = None
    suffix_padding: bool = False
    attn_mask_kind: str | None = None
    mask_3d: bool = False
    causal_attn_mask: bool = False
    fully_masked: str | None = None
    need_weights: bool = True
    average_attn_weights: bool = True
    training: bool = False
    input_scale: float = 1.0
    is_causal: bool = False
    causal_alignment: str = "top-left"
    rope: Rope | None = None
    position_offset: int = 0
    qk_norm: QKNorm | None = None
    seed: int = 0

    def __post_init__(self):
        check_alignment(self.causal_alignment)
        for name in ("key_padding_mask_kind", "attn_mask_kind"):
            if getattr(self, name) not in MASK_KINDS:
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be one of {MASK_KINDS}")
        if self.fully_masked not in FULLY_MASKED_MODES:
            raise ValueError(f"fully_masked={self.fully_masked!r}, but should be one of {FULLY_MASKED_MODES}")

    def __repr__(self) -> str:
        return _non_default(self, ("config",))

    def position_ids(self):
        """With RoPE, the absolute positions ``(query (L,), key (S,))``: key j sits at ``position_offset + j``
        and query i at ``position_offset + pos``, pos placed by the alignment (i, or i + S - L); else None."""
        if self.rope is None:
            return None
        shift = self.position_offset + (self.S - self.L if self.causal_alignment == "bottom-right" else 0)
        return torch.arange(self.L) + shift, torch.arange(self.S) + self.position_offset

    @property
    def positional(self) -> bool:
        """Keys are hidden by position (the causal flag or a window), not only by the masks given."""
        return self.is_causal or self.config.window is not None

    @property
    def batched(self) -> bool:
        return self.batch is not None

    @property
    def B(self) -> int:
        return 1 if self.batch is None else self.batch

    @property
    def layout(self) -> str:
        if not self.batched:
            return "unbatched"
        return "batch_first" if self.config.batch_first else "seq_first"

    @property
    def has_mask(self) -> bool:
        return self.key_padding_mask_kind is not None or self.attn_mask_kind is not None

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)

    def with_config(self, **changes) -> "Problem":
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    def to_dict(self) -> dict:
        """The fields that differ from their defaults, JSON-ready (the config's too); :meth:`from_dict` reads it."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                out["config"] = {c.name: getattr(value, c.name) for c in dataclasses.fields(value)
                                 if c.name in ("embed_dim", "num_heads") or getattr(value, c.name) != c.default}
            elif f.default is dataclasses.MISSING or value != f.default:
                out[f.name] = (str(value).removeprefix("torch.") if isinstance(value, torch.dtype)
                               else dataclasses.asdict(value) if isinstance(value, (Rope, QKNorm)) else value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Problem":
        fields = dict(data)
        config = dict(fields.pop("config"))
        if config.get("window") is not None:
            config["window"] = tuple(config["window"])
        if "dtype" in fields:
            fields["dtype"] = getattr(torch, fields["dtype"])
        if fields.get("rope") is not None:
            fields["rope"] = Rope(**fields["rope"])
        if fields.get("qk_norm") is not None:
            fields["qk_norm"] = QKNorm(**fields["qk_norm"])
        return cls(Config(**config), **fields)

    def short(self) -> str:
        """One line naming every field that matters, for failure messages."""
        dt = str(self.dtype).replace("torch.", "")
        parts = [f"B={self.batch if self.batched else 'unbatched'}", f"L={self.L}",
                 f"S={self.S}", self.config.short(), dt, self.layout]
        if self.self_attention:
            parts.append("self-attention")
        elif self.key_is_value:
            parts.append("key is value")
        if self.key_padding_mask_kind:
            parts.append(f"key_padding_mask={self.key_padding_mask_kind}")
        if self.attn_mask_kind:
            shape = "3d" if self.mask_3d else "2d"
            parts.append(f"attn_mask={self.attn_mask_kind}-{shape}{'-causal' if self.causal_attn_mask else ''}")
        if self.is_causal:
            parts.append("is_causal=True" + (f" ({self.causal_alignment})" if self.L != self.S else ""))
        elif self.config.window is not None and self.L != self.S:
            parts.append(f"window aligned {self.causal_alignment}")
        if self.rope is not None:
            parts.append(self.rope.short() + f", positions from {self.position_offset}")
        if self.qk_norm is not None:
            parts.append(f"qk_norm over {self.qk_norm.over}")
        if self.fully_masked:
            parts.append(f"fully_masked={self.fully_masked}")
        parts.append(f"need_weights={self.need_weights}")
        if self.need_weights:
            parts.append(f"average_attn_weights={self.average_attn_weights}")
        if self.training:
            parts.append("training")
        if self.input_scale != 1.0:
            parts.append(f"input_scale={self.input_scale:g}")
        parts.append(f"seed={self.seed}")
        return ", ".join(parts)
