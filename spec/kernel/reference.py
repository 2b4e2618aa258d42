"""The kernel contract's reference: :func:`attention`, composed of :mod:`attnspec.reference`'s primitives.

It runs in any dtype: float64 on the CPU is the reference itself; in an implementation's dtype it is the
plain computation whose error sets the tolerance (:mod:`attnspec.tolerances`). The order of the steps
is the contract's: scale, soft-cap, ALiBi, then the mask (:func:`attnspec.reference.scores`).
"""
from __future__ import annotations

import torch

from .. import masks, reference
from .problem import KernelInputs, KernelProblem


def scores(q, k, *, hidden=None, scale: float, softcap: float = 0.0, alibi_slopes=None,
           alignment: str = "bottom-right", scale_keys: bool = False):
    """The final scores (B, Hq, Lq, Lk) of q (B, Lq, Hq, D) and k (B, Lk, Hkv, D), -inf where ``hidden``
    (bool (Lq, Lk), True = hidden); ``scale_keys``: scale the keys instead of the queries (the reordered baseline)."""
    Hq, Lq, Lk = q.shape[2], q.shape[1], k.shape[1]
    qh = q.transpose(1, 2)  # (B, Hq, Lq, D)
    kh = reference.expand_kv_heads(k.transpose(1, 2), Hq)  # (B, Hq, Lk, D): query head h reads kv head h // G
    if scale_keys:
        kh, scale = kh * scale, 1.0
    bias = None
    if alibi_slopes is not None:
        bias = reference.alibi_bias(alibi_slopes.to(q.device, q.dtype), Lq, Lk, alignment=alignment)  # (B|1, Hq, Lq, Lk)
    mask = None if hidden is None else masks.additive(hidden.to(q.device), q.dtype)  # (Lq, Lk): -inf where hidden
    return reference.scores(qh, kh, scale=scale, softcap=softcap or None, bias=bias, mask=mask)  # (B, Hq, Lq, Lk)


def attention(q, k, v, **options):
    """``(out (B, Lq, Hq, Dv), lse (B, Hq, Lq))`` for q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), with
    the options of :func:`scores`. A row with no visible key gives output 0 and LSE -inf."""
    s = scores(q, k, **options)  # (B, Hq, Lq, Lk)
    vh = reference.expand_kv_heads(v.transpose(1, 2), q.shape[2])  # (B, Hq, Lk, Dv)
    out = reference.softmax_zero_on_empty(s) @ vh  # (B, Hq, Lq, Dv)
    return out.transpose(1, 2), reference.log_normalizer(s)  # (B, Lq, Hq, Dv), (B, Hq, Lq)


def of_problem(p: KernelProblem, x: KernelInputs, *, dtype=torch.float64, device="cpu", scale_keys=False,
               requires_grad=False):
    """:func:`attention` on the problem's tensors ``x``, cast to ``dtype`` on ``device`` (float64 on the CPU: the
    reference). ``requires_grad``: q, k and v are fresh leaves, returned too: ``(out, lse, (q, k, v))``."""
    cast = lambda t: t.detach().to(device=device, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    q, k, v = cast(x.q), cast(x.k), cast(x.v)
    out, lse = attention(q, k, v, hidden=p.hidden(device), scale=p.softmax_scale, softcap=p.softcap,
                         alibi_slopes=x.alibi_slopes, alignment=p.alignment, scale_keys=scale_keys)
    return out, lse, (q, k, v)


def final_scores(p: KernelProblem, x: KernelInputs) -> torch.Tensor:
    """The problem's float64 final scores (B, Hq, Lq, Lk) on the CPU, -inf where hidden."""
    q, k = (t.detach().to("cpu", torch.float64) for t in (x.q, x.k))
    return scores(q, k, hidden=p.hidden(), scale=p.softmax_scale, softcap=p.softcap, alibi_slopes=x.alibi_slopes,
                  alignment=p.alignment)
