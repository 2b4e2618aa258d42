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

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

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
        defaults = Config(self.embed_dim, self.num_heads)
        for f in dataclasses.fields(self):
            if f.name in ("embed_dim", "num_heads", "batch_first"):
                continue
            value = getattr(self, f.name)
            if value != getattr(defaults, f.name):
                parts.append(f"{f.name}={value}")
        return ", ".join(parts)


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
    seed: int = 0

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
