"""Canonical weights: one layout every implementation's parameters map to.

``Wq (E, qdim)``, ``Wk (Ekv, kdim)``, ``Wv (Ekv, vdim)``, ``Wo (E, E)``, where Ekv = E unless keys
and values have fewer heads (``num_kv_heads * head_dim``); biases ``bq (E,)``, ``bk``/``bv (Ekv,)``,
``bo (E,)``; ``bias_k``/``bias_v`` ``(Ekv,)``; ``Wo`` and any bias may be absent (None); for talking
heads ``mix_pre (H, H)`` mixes logits across heads before the softmax and ``mix_post (H, H)`` mixes
the weights after it, each with an optional ``(H,)`` bias. Absent parts are ``None``.

A module built from ``nn.Linear`` projections maps to them with :func:`from_linears` and back with
:func:`to_linears` (``attnspec.from_linears``, ``attnspec.to_linears``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import AdapterError

NAMES = ("Wq", "Wk", "Wv", "bq", "bk", "bv", "Wo", "bo", "bias_k", "bias_v",
         "mix_pre", "mix_pre_bias", "mix_post", "mix_post_bias", "q_norm", "k_norm", "alibi_slopes", "sinks")


@dataclass
class CanonicalWeights:
    Wq: torch.Tensor
    Wk: torch.Tensor
    Wv: torch.Tensor
    Wo: torch.Tensor | None  # None: no output projection (capabilities.out_projection)
    bq: torch.Tensor | None = None
    bk: torch.Tensor | None = None
    bv: torch.Tensor | None = None
    bo: torch.Tensor | None = None
    bias_k: torch.Tensor | None = None
    bias_v: torch.Tensor | None = None
    mix_pre: torch.Tensor | None = None
    mix_pre_bias: torch.Tensor | None = None
    mix_post: torch.Tensor | None = None
    mix_post_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None  # QK-norm weights: (hd,) per head, or (E,) over the whole projection
    k_norm: torch.Tensor | None = None  # (hd,), or (Ekv,)
    alibi_slopes: torch.Tensor | None = None  # (H,), positive
    sinks: torch.Tensor | None = None  # (H,): each head's sink logit

    def items(self):
        """(name, tensor) for every present tensor, in canonical order."""
        return [(n, getattr(self, n)) for n in NAMES if getattr(self, n) is not None]

    def map(self, fn) -> "CanonicalWeights":
        """A copy with ``fn`` applied to every present tensor."""
        return dataclasses.replace(self, **{n: fn(t) for n, t in self.items()})

    def to(self, dtype=None, device=None) -> "CanonicalWeights":
        return self.map(lambda t: t.detach().to(dtype=dtype, device=device))

    def replace(self, **changes) -> "CanonicalWeights":
        return dataclasses.replace(self, **changes)


def copy_(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into ``param`` in place, with a message naming both shapes on mismatch."""
    if param.shape != value.shape:
        raise AdapterError(f"cannot load a {tuple(value.shape)} tensor into a parameter of "
                           f"shape {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(dtype=param.dtype, device=param.device))


Projection = nn.Linear | Sequence[nn.Linear]  # one Linear, or one per head (rows stacked in order)


def _stacked(projection: Projection, part: str) -> torch.Tensor | None:
    """The ``weight`` or ``bias`` of one Linear, or of one Linear per head stacked by rows (head h in block h)."""
    if isinstance(projection, nn.Module) and not isinstance(projection, nn.ModuleList):
        return getattr(projection, part)
    parts = [getattr(linear, part) for linear in projection]
    if all(t is None for t in parts):
        return None  # every head built with bias=False
    if any(t is None for t in parts):
        raise AdapterError(f"from_linears: some of the per-head Linears have a {part} and some do not")
    return torch.cat(parts)  # (sum of out_features, ...)


def _qkv_sizes(qkv: nn.Linear, split) -> tuple:
    """The rows of q, k and v in a fused projection, checked against its ``out_features``."""
    rows = qkv.weight.shape[0]
    if split is None:
        if rows % 3:
            raise AdapterError(f"from_linears: the fused qkv has {rows} rows, not three equal parts: pass "
                               "split=(E, Ekv, Ekv) with the rows of q, k and v")
        return (rows // 3,) * 3
    if len(split) != 3 or sum(split) != rows:
        raise AdapterError(f"from_linears: split={tuple(split)}, but should be the rows of q, k and v, "
                           f"three sizes that sum to the fused qkv's {rows}")
    return tuple(split)


def from_linears(q: Projection | None = None, k: Projection | None = None, v: Projection | None = None,
                 out: nn.Linear | None = None, *, qkv: nn.Linear | None = None, split: tuple | None = None,
                 heads_interleaved: int | None = None, mix_pre: nn.Linear | None = None,
                 mix_post: nn.Linear | None = None, **extra) -> CanonicalWeights:
    """The :class:`CanonicalWeights` of a module built from ``nn.Linear`` projections, as views of their parameters.

    * ``q``, ``k``, ``v``: one Linear each, ``Wq = q.weight`` (E, qdim) and so on; or, for a module with
      one Linear per head (a ``ModuleList`` of heads), a sequence of them, whose rows are stacked in head
      order (head h is block h).
    * or ``qkv``: one fused Linear whose rows are ``[Wq; Wk; Wv]``, three equal parts, or
      ``split=(E, Ekv, Ekv)`` rows where keys and values have fewer heads (grouped-query attention); or, with
      ``heads_interleaved=H``, rows grouped by head, (H, 3, head_dim): head h's query, key and value rows in
      turn (BLOOM, Falcon-RW, GPT-NeoX). Those three are copies, not views: their rows are not contiguous.
    * ``out``: the output projection, ``Wo = out.weight``; None where the module has none (``Wo=None``).
    * ``mix_pre`` / ``mix_post``: talking heads' (H, H) Linears across the head axis, before and after
      the softmax (``mix_pre``, ``mix_pre_bias``, ...).
    * ``extra``: any other canonical tensors, as they are (``bias_k=``, ``bias_v=``).

    A Linear built with ``bias=False`` gives no bias (None). Only indexing and concatenation are used,
    as :meth:`attnspec.Adapter.get_weights` must. The inverse is :func:`to_linears`.
    """
    if (qkv is None) == (q is None or k is None or v is None):
        raise AdapterError("from_linears takes either q, k and v, or qkv (a fused projection)")
    if qkv is not None and heads_interleaved is not None:
        (Wq, Wk, Wv), (bq, bk, bv) = (_deinterleaved(t, heads_interleaved) for t in (qkv.weight, qkv.bias))
    elif qkv is not None:
        sizes = _qkv_sizes(qkv, split)
        Wq, Wk, Wv = qkv.weight.split(sizes)  # rows [q; k; v]
        bq, bk, bv = (None,) * 3 if qkv.bias is None else qkv.bias.split(sizes)
    else:
        (Wq, bq), (Wk, bk), (Wv, bv) = ((_stacked(p, "weight"), _stacked(p, "bias")) for p in (q, k, v))
    for name, linear in (("mix_pre", mix_pre), ("mix_post", mix_post)):
        if linear is not None:
            extra.update({name: linear.weight, f"{name}_bias": linear.bias})
    return CanonicalWeights(Wq=Wq, Wk=Wk, Wv=Wv, bq=bq, bk=bk, bv=bv, Wo=None if out is None else out.weight,
                            bo=None if out is None else out.bias, **extra)


def _deinterleaved(t: torch.Tensor | None, heads: int) -> tuple:
    """Rows grouped by head, (H, 3, hd, ...) flattened, as the three blocks ``[q], [k], [v]`` of (H*hd, ...)."""
    if t is None:
        return None, None, None
    if t.shape[0] % (3 * heads):
        raise AdapterError(f"from_linears: heads_interleaved={heads}, but the fused projection has {t.shape[0]} rows, "
                           f"not a multiple of 3 * {heads}")
    grouped = t.unflatten(0, (heads, 3, -1))  # (H, 3, hd, ...): head h's q, k and v rows in turn
    return tuple(grouped[:, i].flatten(0, 1) for i in range(3))  # (H*hd, ...) each


def to_linears(weights: CanonicalWeights, q: Projection | None = None, k: Projection | None = None,
               v: Projection | None = None, out: nn.Linear | None = None, *, qkv: nn.Linear | None = None,
               heads_interleaved: int | None = None, mix_pre: nn.Linear | None = None,
               mix_post: nn.Linear | None = None) -> None:
    """Copy canonical weights into the ``nn.Linear`` projections they came from: the inverse of :func:`from_linears`.

    The same arguments: ``q``, ``k``, ``v`` (one Linear each, or one per head: each takes its block of rows)
    or a fused ``qkv`` (rows ``[Wq; Wk; Wv]``, whatever their sizes, or grouped by head with
    ``heads_interleaved=H``), ``out`` (None: none to load),
    ``mix_pre`` / ``mix_post``. Each weight must have the Linear's shape (AdapterError otherwise). A bias the
    weights lack (None) is loaded as zeros where the Linear has one; a Linear without a bias takes none.
    Other canonical tensors (``bias_k``, ...) are left to the adapter.
    """
    def load(name, linear, W, b):
        if W is None:
            raise AdapterError(f"to_linears: the weights have no {name} to load into its Linear")
        copy_(linear.weight, W)
        if linear.bias is not None:
            copy_(linear.bias, b if b is not None else torch.zeros_like(linear.bias))

    def load_rows(name, projection, W, b):  # per-head Linears take consecutive blocks of rows
        if isinstance(projection, nn.Module) and not isinstance(projection, nn.ModuleList):
            return load(name, projection, W, b)
        sizes = [linear.weight.shape[0] for linear in projection]
        for linear, W_h, b_h in zip(projection, W.split(sizes), (None,) * len(sizes) if b is None else b.split(sizes)):
            load(name, linear, W_h, b_h)  # (hd, E), (hd,)

    if (qkv is None) == (q is None or k is None or v is None):
        raise AdapterError("to_linears takes either q, k and v, or qkv (a fused projection)")
    if qkv is not None:
        zeros = lambda b, W: b if b is not None else W.new_zeros(W.shape[0])  # noqa: E731
        parts = (weights.Wq, weights.Wk, weights.Wv), tuple(zeros(b, W) for b, W in (
            (weights.bq, weights.Wq), (weights.bk, weights.Wk), (weights.bv, weights.Wv)))
        if heads_interleaved is None:
            W, b = (torch.cat(p) for p in parts)  # rows [q; k; v]
        else:  # rows (H, 3, hd): each block (H*hd, ...) -> (H, hd, ...), stacked on a new axis 1
            W, b = (torch.stack([t.unflatten(0, (heads_interleaved, -1)) for t in p], dim=1).flatten(0, 2)
                    for p in parts)
        load("Wq", qkv, W, b)
    else:
        for name, projection in (("Wq", q), ("Wk", k), ("Wv", v)):
            load_rows(name, projection, getattr(weights, name), getattr(weights, "b" + name[1]))
    for name, linear in (("Wo", out), ("mix_pre", mix_pre), ("mix_post", mix_post)):
        if linear is not None:
            bias = "bo" if name == "Wo" else f"{name}_bias"
            load(name, linear, getattr(weights, name), getattr(weights, bias))


def randomized(weights: CanonicalWeights, generator: torch.Generator) -> CanonicalWeights:
    """Fresh values of the same structure; biases are never zero (torch's init zeroes them)."""

    def draw(name: str, t: torch.Tensor) -> torch.Tensor:
        x = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        if name.startswith("mix_pre") or name.startswith("mix_post"):
            return x * 0.5 if "bias" in name else torch.eye(t.shape[0], dtype=torch.float64) + 0.5 * x
        if name == "alibi_slopes":  # positive, from 2^-4 to 1: distances of a few keys move the logits by O(1)
            return 2.0 ** (-4 * torch.rand(t.shape, generator=generator, dtype=torch.float64))
        if name in ("q_norm", "k_norm"):  # scales near 1
            return 1.0 + 0.5 * x
        if t.dim() == 2:  # a projection: keep outputs O(1) whatever the width
            return x / t.shape[1] ** 0.5
        return 0.5 * x

    return dataclasses.replace(weights, **{n: draw(n, t) for n, t in weights.items()})


def permute_heads(weights: CanonicalWeights, perm: torch.Tensor, num_heads: int,
                  kv_perm: torch.Tensor | None = None) -> CanonicalWeights:
    """Move head ``perm[i]`` to slot ``i``: rows of Wq/Wk/Wv and their biases, columns of Wo, per-head
    weights (ALiBi slopes, sinks) and QK-norm weights over the whole projection.

    With fewer key/value heads (grouped-query attention) their rows move by ``kv_perm`` instead,
    which must keep every query head with its key/value head (see :func:`group_permutation`).
    """
    E = weights.Wq.shape[0]
    hd = E // num_heads
    Hkv = weights.Wk.shape[0] // hd
    if kv_perm is None:
        if Hkv != num_heads:
            raise ValueError(f"permute_heads: kv_perm is needed with {Hkv} key/value heads for {num_heads} heads")
        kv_perm = perm
    feat = (perm[:, None] * hd + torch.arange(hd)[None, :]).reshape(E)  # (E,) feature order
    kv_feat = (kv_perm[:, None] * hd + torch.arange(hd)[None, :]).reshape(Hkv * hd)  # (Ekv,)
    rows = lambda t: None if t is None else t[feat]  # noqa: E731
    kv_rows = lambda t: None if t is None else t[kv_feat]  # noqa: E731
    mix = lambda t: None if t is None else (t[perm][:, perm] if t.dim() == 2 else t[perm])  # noqa: E731
    norm = lambda t, f: t if t is None or t.shape[0] == hd else t[f]  # noqa: E731  (hd,): shared by every head
    return dataclasses.replace(
        weights, Wq=weights.Wq[feat], Wk=weights.Wk[kv_feat], Wv=weights.Wv[kv_feat],
        bq=rows(weights.bq), bk=kv_rows(weights.bk), bv=kv_rows(weights.bv),
        Wo=None if weights.Wo is None else weights.Wo[:, feat],  # without Wo the output's blocks move
        bias_k=kv_rows(weights.bias_k), bias_v=kv_rows(weights.bias_v),
        mix_pre=mix(weights.mix_pre), mix_pre_bias=mix(weights.mix_pre_bias),
        mix_post=mix(weights.mix_post), mix_post_bias=mix(weights.mix_post_bias),
        q_norm=norm(weights.q_norm, feat), k_norm=norm(weights.k_norm, kv_feat),
        alibi_slopes=mix(weights.alibi_slopes), sinks=mix(weights.sinks))


def group_permutation(num_heads: int, num_kv_heads: int, generator: torch.Generator, *,
                      within_groups_only: bool = False):
    """A permutation of the query heads that keeps each with its key/value head: ``(perm, kv_perm)``.

    Query head h reads key/value head ``h // G`` (G = num_heads // num_kv_heads): the groups move
    together by ``kv_perm`` (unless ``within_groups_only``) and heads move within their group.
    """
    G = num_heads // num_kv_heads
    kv_perm = torch.arange(num_kv_heads) if within_groups_only else torch.randperm(num_kv_heads, generator=generator)
    within = torch.stack([torch.randperm(G, generator=generator) for _ in range(num_kv_heads)])  # (Hkv, G)
    perm = (kv_perm[:, None] * G + within).reshape(num_heads)  # (H,): slot a*G + r takes head kv_perm[a]*G + within
    return perm, kv_perm
