"""Negative control: seed 001's sinusoidal position encoding in front of ``nn.MultiheadAttention``.

``P[pos, 2i] = sin(pos / 10000^(2i/d))`` and ``P[pos, 2i+1] = cos(pos / 10000^(2i/d))``
are added to query, key and value along their sequence axes, then the inputs go
to a standard ``nn.MultiheadAttention``. Attention then depends on token order,
so the permutation laws must reject it. Same constructor and parameter names as
``nn.MultiheadAttention``, so :class:`attnspec.adapter.DropIn` needs no adapter code.
"""
from __future__ import annotations

import torch
from torch import nn

from attnspec.adapter import DropIn

from .torch_mha import CAPABILITIES


def sinusoidal_encoding(length: int, width: int, *, dtype, device) -> torch.Tensor:
    """P (length, width), computed in float64 and cast to ``dtype``."""
    pos = torch.arange(length, dtype=torch.float64, device=device)[:, None]  # (length, 1)
    two_i = torch.arange(0, width, 2, dtype=torch.float64, device=device)  # (ceil(width/2),)
    angle = pos / 10000 ** (two_i / width)  # (length, ceil(width/2))
    P = torch.zeros(length, width, dtype=torch.float64, device=device)
    P[:, 0::2] = torch.sin(angle)
    P[:, 1::2] = torch.cos(angle[:, : width // 2])
    return P.to(dtype)


class PositionalMultiheadAttention(nn.MultiheadAttention):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x + P along the sequence axis: (L, E), (N, L, E) if batch_first, else (L, N, E)."""
        seq_axis = 1 if (x.dim() == 3 and self.batch_first) else 0
        P = sinusoidal_encoding(x.shape[seq_axis], x.shape[-1], dtype=x.dtype, device=x.device)  # (L, E)
        if x.dim() == 3:
            P = P[None] if self.batch_first else P[:, None]  # (1, L, E) or (L, 1, E)
        return x + P

    def forward(self, query, key, value, *args, **kwargs):
        q = self.encode(query)
        k = q if key is query else self.encode(key)  # keep self-attention's q is k is v
        v = k if value is key else self.encode(value)
        return super().forward(q, k, v, *args, **kwargs)


ADAPTER = DropIn(PositionalMultiheadAttention, name="control.positional", capabilities=CAPABILITIES)
