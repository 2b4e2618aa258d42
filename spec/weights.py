"""Canonical weights: one layout every implementation's parameters map to.

``Wq (E, qdim)``, ``Wk (E, kdim)``, ``Wv (E, vdim)``, ``Wo (E, E)``; biases ``(E,)``;
``bias_k``/``bias_v`` ``(E,)``; ``Wo`` and any bias may be absent (None); for talking heads ``mix_pre (H, H)`` mixes logits
across heads before the softmax and ``mix_post (H, H)`` mixes the weights after it,
each with an optional ``(H,)`` bias. Absent parts are ``None``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import AdapterError

NAMES = ("Wq", "Wk", "Wv", "bq", "bk", "bv", "Wo", "bo", "bias_k", "bias_v",
         "mix_pre", "mix_pre_bias", "mix_post", "mix_post_bias")


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


def from_linears(q: nn.Linear | None = None, k: nn.Linear | None = None, v: nn.Linear | None = None,
                 out: nn.Linear | None = None, *, qkv: nn.Linear | None = None, split: tuple | None = None,
                 **extra) -> CanonicalWeights:
    """Canonical weights of a module built from ``nn.Linear`` projections, as views of their parameters.

    Separate ``q``, ``k``, ``v`` (and ``out``, None without an output projection), or one fused ``qkv``
    whose rows are ``[Wq; Wk; Wv]``: three equal parts, or ``split=(E, Ekv, Ekv)`` rows with fewer
    key/value heads. A Linear built with ``bias=False`` gives no bias. ``extra`` passes other canonical
    tensors (``bias_k``, ``mix_pre``, ...). The inverse is :func:`to_linears`.
    """
    if (qkv is None) == (q is None or k is None or v is None):
        raise TypeError("from_linears takes either q, k and v, or qkv (a fused projection)")
    if qkv is not None:
        sizes = split or (qkv.out_features // 3,) * 3
        (Wq, Wk, Wv), (bq, bk, bv) = qkv.weight.split(sizes), (
            qkv.bias.split(sizes) if qkv.bias is not None else (None,) * 3)  # rows [q; k; v]
    else:
        Wq, Wk, Wv, bq, bk, bv = q.weight, k.weight, v.weight, q.bias, k.bias, v.bias
    return CanonicalWeights(Wq=Wq, Wk=Wk, Wv=Wv, bq=bq, bk=bk, bv=bv, Wo=None if out is None else out.weight,
                            bo=None if out is None else out.bias, **extra)


def to_linears(weights: CanonicalWeights, q: nn.Linear | None = None, k: nn.Linear | None = None,
               v: nn.Linear | None = None, out: nn.Linear | None = None, *, qkv: nn.Linear | None = None) -> None:
    """Copy canonical weights into ``nn.Linear`` projections (the inverse of :func:`from_linears`).

    A bias the weights lack is loaded as zeros where the Linear has one; a Linear without a bias takes none.
    """
    def load(linear, W, b):
        copy_(linear.weight, W)
        if linear.bias is not None:
            copy_(linear.bias, b if b is not None else torch.zeros_like(linear.bias))

    if qkv is not None:
        zeros = lambda b, W: b if b is not None else W.new_zeros(W.shape[0])  # noqa: E731
        bias = torch.cat([zeros(weights.bq, weights.Wq), zeros(weights.bk, weights.Wk), zeros(weights.bv, weights.Wv)])
        load(qkv, torch.cat([weights.Wq, weights.Wk, weights.Wv]), bias)  # rows [q; k; v]
    else:
        for linear, W, b in ((q, weights.Wq, weights.bq), (k, weights.Wk, weights.bk), (v, weights.Wv, weights.bv)):
            load(linear, W, b)
    if out is not None:
        load(out, weights.Wo, weights.bo)


def randomized(weights: CanonicalWeights, generator: torch.Generator) -> CanonicalWeights:
    """Fresh values of the same structure; biases are never zero (torch's init zeroes them)."""

    def draw(name: str, t: torch.Tensor) -> torch.Tensor:
        x = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        if name.startswith("mix_pre") or name.startswith("mix_post"):
            return x * 0.5 if "bias" in name else torch.eye(t.shape[0], dtype=torch.float64) + 0.5 * x
        if t.dim() == 2:  # a projection: keep outputs O(1) whatever the width
            return x / t.shape[1] ** 0.5
        return 0.5 * x

    return dataclasses.replace(weights, **{n: draw(n, t) for n, t in weights.items()})


def permute_heads(weights: CanonicalWeights, perm: torch.Tensor, num_heads: int,
                  kv_perm: torch.Tensor | None = None) -> CanonicalWeights:
    """Move head ``perm[i]`` to slot ``i``: rows of Wq/Wk/Wv and their biases, columns of Wo.

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
    return dataclasses.replace(
        weights, Wq=weights.Wq[feat], Wk=weights.Wk[kv_feat], Wv=weights.Wv[kv_feat],
        bq=rows(weights.bq), bk=kv_rows(weights.bk), bv=kv_rows(weights.bv),
        Wo=None if weights.Wo is None else weights.Wo[:, feat],  # without Wo the output's blocks move
        bias_k=kv_rows(weights.bias_k), bias_v=kv_rows(weights.bias_v),
        mix_pre=mix(weights.mix_pre), mix_pre_bias=mix(weights.mix_pre_bias),
        mix_post=mix(weights.mix_post), mix_post_bias=mix(weights.mix_post_bias))


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
