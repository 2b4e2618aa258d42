"""What a check runs on: a module configuration and one drawn problem.

A :class:`Config` holds the constructor arguments of ``nn.MultiheadAttention``
(plus ``qdim``, an extension for implementations whose query width differs from
``embed_dim``). A :class:`Problem` is one call: the config, the shapes, the masks,
the flags, the dtype and the seed from which every tensor value is generated.
Hypothesis draws problems (see :mod:`attnspec.strategies`); tensors are made from the
seed on the CPU and moved, so a failure replays identically on any device.
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

    def __post_init__(self):
        if self.pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope pairing={self.pairing!r}, but should be one of {ROPE_PAIRINGS}")
        if isinstance(self.base, bool) or not isinstance(self.base, (int, float)) or not self.base > 1 \
                or self.base == float("inf"):
            raise ValueError(f"rope base={self.base!r}, but should be a finite number > 1 (10000 in most models)")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0 < self.fraction <= 1:
            raise ValueError(f"rope fraction={self.fraction!r}, but should be in (0, 1]: the leading fraction "
                             "of each head's features that is rotated")
        object.__setattr__(self, "base", float(self.base))
        object.__setattr__(self, "fraction", float(self.fraction))

    def rotated(self, head_dim: int) -> int:
        """How many leading features of a head of ``head_dim`` are rotated: ``int(head_dim * fraction)``."""
        return int(head_dim * self.fraction)

    def fits(self, head_dim: int) -> bool:
        """Whether heads of ``head_dim`` rotate an even, non-zero number of features."""
        r = self.rotated(head_dim)
        return r >= 2 and r % 2 == 0

    def short(self) -> str:
        return f"rope({self.pairing}, base={self.base:g}" + (f", fraction={self.fraction:g})" if self.fraction != 1
                                                              else ")")


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

    def __post_init__(self):
        if self.num_kv_heads is not None:
            if not (isinstance(self.num_kv_heads, int) and self.num_kv_heads >= 1
                    and isinstance(self.num_heads, int) and self.num_heads % self.num_kv_heads == 0):
                raise ValueError(f"num_kv_heads={self.num_kv_heads!r}, but should be a positive int dividing "
                                 f"num_heads={self.num_heads!r} (1 is multi-query attention)")
        if self.window is not None:
            object.__setattr__(self, "window", check_window(self.window))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``num_kv_heads``, or ``num_heads`` when not given (ordinary multi-head attention)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

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
        parts = [f"E={self.embed_dim}", f"H={self.num_heads}"]
        if self.num_kv_heads is not None:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        if self.window is not None:
            parts.append(f"window={self.window}")
        defaults = Config(self.embed_dim, self.num_heads)
        for f in dataclasses.fields(self):
            if f.name in ("embed_dim", "num_heads", "batch_first", "num_kv_heads", "window"):
                continue
            value = getattr(self, f.name)
            if value != getattr(defaults, f.name):
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

    ``batch is None`` means unbatched input. ``self_attention`` means the same
    tensor object is passed as query, key and value (then ``S == L``); ``key_is_value``
    passes one tensor as both key and value (cross-attention with shared keys and values).
    ``key_padding_mask`` / ``attn_mask`` are ``None``, ``"bool"`` or ``"float"``;
    ``suffix_padding`` pads only trailing keys (length masks). ``mask_3d`` gives the attention mask shape ``(B*H, L, S)`` (indexed ``b*H + h``).
    ``causal`` makes the attention mask the top-left causal mask. ``fully_masked``
    masks every key of some query rows on purpose (``"batch"``: a whole batch
    item's keys, ``"row"``: one query row, ``"head"``: one row of one head).
    ``scale`` multiplies query and key inputs, to reach large logits.
    ``rope``: the implementation's declared rotary embedding (:class:`Rope`), with keys at positions
    ``position_offset + j`` (:meth:`position_ids`).
    ``is_causal`` passes the causal flag (``Adapter.call(..., is_causal=True)``); ``alignment`` is the
    implementation's declared causal alignment (:data:`ALIGNMENTS`), which places the causal mask and
    the configuration's window when L != S.
    """

    config: Config
    batch: int | None
    L: int
    S: int
    dtype: torch.dtype = torch.float64
    self_attention: bool = False
    key_is_value: bool = False
    key_padding_mask: str | None = None
    suffix_padding: bool = False
    attn_mask: str | None = None
    mask_3d: bool = False
    causal: bool = False
    fully_masked: str | None = None
    need_weights: bool = True
    average_attn_weights: bool = True
    training: bool = False
    scale: float = 1.0
    is_causal: bool = False
    alignment: str = "top-left"
    rope: Rope | None = None
    position_offset: int = 0
    seed: int = 0

    def __post_init__(self):
        check_alignment(self.alignment)

    def position_ids(self):
        """With RoPE, the absolute positions ``(query (L,), key (S,))``: key j sits at ``position_offset + j``
        and query i at ``position_offset + pos``, pos placed by the alignment (i, or i + S - L); else None."""
        if self.rope is None:
            return None
        shift = self.position_offset + (self.S - self.L if self.alignment == "bottom-right" else 0)
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
        return self.key_padding_mask is not None or self.attn_mask is not None

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)

    def with_config(self, **changes) -> "Problem":
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    def short(self) -> str:
        """One line naming every field that matters, for failure messages."""
        dt = str(self.dtype).replace("torch.", "")
        parts = [f"B={self.batch if self.batched else 'unbatched'}", f"L={self.L}",
                 f"S={self.S}", self.config.short(), dt, self.layout]
        if self.self_attention:
            parts.append("self-attention")
        elif self.key_is_value:
            parts.append("key is value")
        if self.key_padding_mask:
            parts.append(f"key_padding_mask={self.key_padding_mask}")
        if self.attn_mask:
            shape = "3d" if self.mask_3d else "2d"
            parts.append(f"attn_mask={self.attn_mask}-{shape}{'-causal' if self.causal else ''}")
        if self.is_causal:
            parts.append("is_causal=True" + (f" ({self.alignment})" if self.L != self.S else ""))
        elif self.config.window is not None and self.L != self.S:
            parts.append(f"window aligned {self.alignment}")
        if self.rope is not None:
            parts.append(self.rope.short() + f", positions from {self.position_offset}")
        if self.fully_masked:
            parts.append(f"fully_masked={self.fully_masked}")
        parts.append(f"need_weights={self.need_weights}")
        if self.need_weights:
            parts.append(f"average_attn_weights={self.average_attn_weights}")
        if self.training:
            parts.append("training")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        parts.append(f"seed={self.seed}")
        return ", ".join(parts)
