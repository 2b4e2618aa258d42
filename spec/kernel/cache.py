"""A cache step: :class:`CacheProblem`, its tensors (:func:`make_cache_inputs`), the cache as each item sees it
(contiguous or paged), and each item's dense problem and tensors (what every cache-step law is derived from).

Names: B items, each with ``Lq`` queries; item b's cache holds ``cache_seqlens[b]`` rows (its length ``len_b``);
``Ln`` new rows per item are written at rows ``[len_b, len_b + Ln)`` (none when ``Ln = 0``); ``S`` rows are allocated
per item (``spare_rows`` beyond the longest ``len_b + Ln``). Contiguous, the cache is (B_cache, S, Hkv, D), item b's
row ``cache_batch_idx[b]`` (b without it; B_cache = B + ``spare_items``). Paged, it is a pool of
(num_pages, page_size, Hkv, D) and item b's rows are the pages ``block_table[b, 0]``, ``block_table[b, 1]``, ...
in that order (``spare_pages`` pages no table lists), placed in the pool by a permutation drawn from the seed.

Rotary (``rotary``: a pairing of :data:`attnspec.kernel.declaration.ROTARY_PAIRINGS`): ``rotary_cos`` and
``rotary_sin`` (P, r/2) in q's dtype; new key j of item b turns at position ``len_b + j``, query i at
``len_b + i`` (``rotary_queries="flash-attn"``: at ``len_b`` for every query of a call neither causal nor windowed).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import reference
from .problem import KernelInputs, KernelProblem, PackedProblem, generator, shown, values64

ROTARY_BASE = 10000.0


@dataclass(frozen=True)
class CacheProblem(PackedProblem):
    """A :class:`KernelProblem` of one cache step (see the module docstring). ``Lq``: the queries of each item;
    B and Lk are derived (the items, the longest ``len_b + Ln``). ``rotary_dim``: the rotated features (None: all).
    ``num_splits``: passed when not None."""

    cache_seqlens: tuple = (0,)
    Ln: int = 0
    spare_rows: int = 0
    batch_idx: tuple | None = None
    spare_items: int = 0
    page_size: int | None = None
    spare_pages: int = 0
    rotary: str | None = None
    rotary_dim: int | None = None
    rotary_queries: str = "per-token"
    num_splits: int | None = None
    DERIVED: ClassVar[tuple] = ("B", "Lk")

    def __post_init__(self):
        lengths = tuple(self.cache_seqlens)
        if not lengths or not all(isinstance(n, int) and n >= 0 for n in lengths):
            raise ValueError(f"cache_seqlens={lengths!r}, but should be lengths (ints >= 0), one per item")
        object.__setattr__(self, "cache_seqlens", lengths)
        if self.batch_idx is not None:
            idx = tuple(self.batch_idx)
            if len(idx) != len(lengths) or len(set(idx)) != len(idx) or not all(0 <= i < len(lengths) + self.spare_items
                                                                                   for i in idx):
                raise ValueError(f"batch_idx={idx!r}, but should be distinct rows of the {len(lengths) + self.spare_items}"
                                 " cache items, one per item")
            object.__setattr__(self, "batch_idx", idx)
        if self.rotary_dim is not None and (self.rotary_dim % 2 or not 2 <= self.rotary_dim <= self.D):
            raise ValueError(f"rotary_dim={self.rotary_dim}, but should be even, from 2 to D={self.D}")
        object.__setattr__(self, "B", len(lengths))
        object.__setattr__(self, "Lk", max(lengths) + self.Ln)
        super().__post_init__()

    def __repr__(self) -> str:
        return shown(self)

    @property
    def rows(self) -> int:
        """S: the rows allocated to each item (a paged cache holds ``max_pages * page_size`` of which these count)."""
        return max(self.cache_seqlens) + self.Ln + self.spare_rows

    @property
    def cache_items(self) -> int:
        return self.B + self.spare_items

    @property
    def max_pages(self) -> int:
        return math.ceil(self.rows / self.page_size) if self.rows else 1

    @property
    def num_pages(self) -> int:
        return self.B * self.max_pages + self.spare_pages

    @property
    def rotated(self) -> int:
        return self.D if self.rotary_dim is None else self.rotary_dim

    def item(self, b: int) -> KernelProblem:
        """Item ``b`` as a dense problem of one item: its queries over its cache rows and new rows."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(KernelProblem)}
        return KernelProblem(**{**fields, "B": 1, "Lk": self.cache_seqlens[b] + self.Ln,
                                "alibi": None if self.alibi is None else "heads"})

    def query_positions(self, b: int) -> torch.Tensor:
        """Where item b's queries turn under rotary (Lq,)."""
        start = self.cache_seqlens[b]
        if self.rotary_queries == "flash-attn" and not self.causal and self.window is None:
            return torch.full((self.Lq,), start)
        return torch.arange(self.Lq) + start

    def empty_rows(self) -> torch.Tensor:
        return torch.cat([self.item(b).empty_rows() for b in range(self.B)])

    def short(self) -> str:
        parts = [f"cache_seqlens={list(self.cache_seqlens)}, {self.Ln} new rows, S={self.rows}"]
        parts += [f"cache_batch_idx={list(self.batch_idx)} of {self.cache_items}"] if self.batch_idx is not None else []
        parts += [f"paged by {self.page_size} ({self.spare_pages} unlisted pages)"] if self.page_size else []
        parts += [f"rotary {self.rotary}" + (f" over {self.rotary_dim} of D" if self.rotary_dim else "")
                  + (" (flash-attn's queries)" if self.rotary_queries == "flash-attn" else "")] if self.rotary else []
        parts += [f"num_splits={self.num_splits}"] if self.num_splits is not None else []
        dense = super().short().split(", ")
        return ", ".join([d for d in dense if not d.startswith(("Lk=",))][:1] + parts
                         + [d for d in dense[1:] if not d.startswith(("Lk=",))])


@dataclass
class CacheInputs:
    """The tensors of one cache step: q (B, Lq, Hq, D); the caches (contiguous, or pools with ``block_table``);
    the new rows ``k``, ``v`` (B, Ln, Hkv, ·) or None; ``cache_seqlens`` int32 (B,); ``cache_batch_idx`` int32 or
    None; ``rotary_cos``, ``rotary_sin`` (P, r/2) or None; ALiBi slopes or None."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    cache_batch_idx: torch.Tensor | None = None
    block_table: torch.Tensor | None = None
    rotary_cos: torch.Tensor | None = None
    rotary_sin: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None

    def tensors(self) -> dict:
        return {n: t for n, t in vars(self).items() if t is not None}

    def replace(self, **changes) -> "CacheInputs":
        return CacheInputs(**{**vars(self), **changes})

    def cloned(self) -> "CacheInputs":
        """A copy whose caches are fresh tensors (a call writes them)."""
        return self.replace(k_cache=self.k_cache.clone(), v_cache=self.v_cache.clone())


def rotary_tables(p: CacheProblem, positions: int) -> tuple:
    """cos and sin (positions, r/2) float64: position t, pair i turns by ``t * base ** (-2i / r)``."""
    r = p.rotated
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * \
        ROTARY_BASE ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)[None, :]  # (positions, r/2)
    return angles.cos(), angles.sin()


def paged(logical: torch.Tensor, p: CacheProblem, fill: torch.Tensor) -> tuple:
    """The pool (num_pages, page_size, Hkv, ·) holding ``logical`` (B, S, Hkv, ·) in pages, and the block table
    (B, max_pages) int64: item b's page j is pool page ``table[b, j]``, placed by a permutation from the seed.
    ``fill`` (num_pages, page_size, Hkv, ·): the contents of what no item's rows cover."""
    ps, P = p.page_size, p.max_pages
    order = torch.randperm(p.num_pages, generator=generator(p.seed, 7))
    table = order[:p.B * P].view(p.B, P)  # (B, max_pages)
    pool = fill.clone()
    pages = pool[table.flatten()].view(p.B, P * ps, *logical.shape[2:])  # (B, max_pages * ps, Hkv, ·), a copy
    pages[:, :logical.shape[1]] = logical  # the rows past S keep the fill's values
    pool[table.flatten()] = pages.view(p.B * P, ps, *logical.shape[2:])
    return pool, table


def make_cache_inputs(p: CacheProblem, device="cpu") -> CacheInputs:
    """The problem's tensors in its dtype on ``device``: rows past each item's length hold values too (a kernel that
    reads them reads garbage); rotary tables in q's dtype."""
    S = p.rows
    dense = values64(KernelProblem(B=p.B, Lq=p.Lq, Lk=S + p.Ln, Hq=p.Hq, Hkv=p.Hkv, D=p.D, Dv=p.Dv, values=p.values,
                                   alibi=p.alibi, seed=p.seed))
    g = generator(p.seed, 8)
    k_rows, v_rows = dense.k[:, :S], dense.v[:, :S]  # (B, S, Hkv, ·): each item's cache
    if p.page_size:
        fill = lambda t: torch.randn(p.num_pages, p.page_size, *t.shape[2:], generator=g, dtype=torch.float64)  # noqa: E731
        k_cache, table = paged(k_rows, p, fill(k_rows))
        v_cache, _ = paged(v_rows, p, fill(v_rows))
    else:
        table = None
        rows = list(range(p.B)) if p.batch_idx is None else list(p.batch_idx)
        k_cache = torch.randn(p.cache_items, S, *k_rows.shape[2:], generator=g, dtype=torch.float64)
        v_cache = torch.randn(p.cache_items, S, *v_rows.shape[2:], generator=g, dtype=torch.float64)
        k_cache[rows], v_cache[rows] = k_rows, v_rows  # the unselected rows keep their random values
    cast = lambda t: None if t is None else t.to(device=device, dtype=p.dtype).contiguous()  # noqa: E731
    ints = lambda t: None if t is None else torch.as_tensor(t, dtype=torch.int32).to(device)  # noqa: E731
    cos = sin = None
    if p.rotary:
        cos, sin = rotary_tables(p, max(p.cache_seqlens) + max(p.Ln, p.Lq) + 1)
    new = p.Ln > 0
    return CacheInputs(cast(dense.q), cast(k_cache), cast(v_cache), ints(list(p.cache_seqlens)),
                       cast(dense.k[:, S:]) if new else None, cast(dense.v[:, S:]) if new else None,
                       ints(None if p.batch_idx is None else list(p.batch_idx)), ints(table), cast(cos), cast(sin),
                       None if dense.alibi_slopes is None else dense.alibi_slopes.to(device))


def logical(cache: torch.Tensor, x: CacheInputs, p: CacheProblem) -> torch.Tensor:
    """Each item's rows of ``cache`` (one of x's caches, or a tensor laid out as them): (B, S', Hkv, ·), a copy."""
    if x.block_table is not None:
        pages = cache[x.block_table.long()]  # (B, max_pages, page_size, Hkv, ·)
        return pages.flatten(1, 2)  # (B, max_pages * page_size, Hkv, ·)
    rows = torch.arange(p.B) if x.cache_batch_idx is None else x.cache_batch_idx.long().cpu()
    return cache[rows.to(cache.device)]  # (B, S, Hkv, ·)


def rotate(t: torch.Tensor, x: CacheInputs, p: CacheProblem, positions: list) -> torch.Tensor:
    """``t`` (B, L, H, D) turned at ``positions[b]`` (L,) per item, with x's tables, in t's dtype."""
    cos = torch.stack([x.rotary_cos[pos.to(x.rotary_cos.device)] for pos in positions])  # (B, L, r/2)
    sin = torch.stack([x.rotary_sin[pos.to(x.rotary_sin.device)] for pos in positions])
    heads = t.transpose(1, 2)  # (B, H, L, D)
    return reference.turned(heads, cos[:, None].to(t.device), sin[:, None].to(t.device), p.rotary).transpose(1, 2)


def key_positions(p: CacheProblem) -> list:
    return [torch.arange(p.Ln) + n for n in p.cache_seqlens]


def new_keys(x: CacheInputs, p: CacheProblem, dtype=None) -> torch.Tensor | None:
    """The new keys as the cache must hold them (B, Ln, Hkv, D): rotated where rotary is drawn, in ``dtype``."""
    if x.k is None:
        return None
    k = x.k if dtype is None else x.k.to(dtype)
    if not p.rotary:
        return k
    tables = x.replace(rotary_cos=x.rotary_cos.to(k.dtype), rotary_sin=x.rotary_sin.to(k.dtype))
    return rotate(k, tables, p, key_positions(p))


def item_inputs(x: CacheInputs, p: CacheProblem, b: int, dtype, device="cpu") -> KernelInputs:
    """Item b's dense tensors in ``dtype`` on ``device``, as the step sees them after its write: q (1, Lq, Hq, D)
    (rotated), k (1, len_b + Ln, Hkv, D) = its cache rows then its new rows (rotated), v likewise; the rotation
    computed in ``dtype`` (the plain computation a kernel makes)."""
    cast = lambda t: t.detach().to(device=device, dtype=dtype)  # noqa: E731
    n = p.cache_seqlens[b]
    tables = x.replace(rotary_cos=None if x.rotary_cos is None else cast(x.rotary_cos),
                       rotary_sin=None if x.rotary_sin is None else cast(x.rotary_sin))
    q = cast(x.q[b:b + 1])  # (1, Lq, Hq, D)
    if p.rotary:
        q = rotate(q, tables, p, [p.query_positions(b)])
    k = cast(logical(x.k_cache, x, p)[b:b + 1, :n])  # (1, len_b, Hkv, D)
    v = cast(logical(x.v_cache, x, p)[b:b + 1, :n])
    if x.k is not None:
        new = cast(x.k[b:b + 1])  # (1, Ln, Hkv, D)
        if p.rotary:
            new = rotate(new, tables, p, [torch.arange(p.Ln) + n])
        k, v = torch.cat([k, new], dim=1), torch.cat([v, cast(x.v[b:b + 1])], dim=1)
    slopes = x.alibi_slopes if x.alibi_slopes is None or x.alibi_slopes.dim() == 1 else x.alibi_slopes[b]
    return KernelInputs(q, k, v, slopes)


def places(x: CacheInputs, p: CacheProblem, b: int, positions) -> tuple:
    """Where item b's logical rows ``positions`` (a range or list) lie in x's caches: ``(first index, second index)``
    lists (cache item and row; or pool page and slot)."""
    positions = list(positions)
    if x.block_table is not None:
        ps = x.k_cache.shape[1]
        return [int(x.block_table[b, n // ps]) for n in positions], [n % ps for n in positions]
    row = b if x.cache_batch_idx is None else int(x.cache_batch_idx[b])
    return [row] * len(positions), positions


def written(cache: torch.Tensor, x: CacheInputs, p: CacheProblem, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``cache`` (laid out as x's caches: the same first two axes) with item b's ``rows[b]`` (Ln, ...) at
    its rows [len_b, len_b + Ln): what the step must leave there."""
    out = cache.clone()
    for b, n in enumerate(p.cache_seqlens):
        first, second = places(x, p, b, range(n, n + p.Ln))
        out[first, second] = rows[b].to(out.dtype)
    return out


def unread(x: CacheInputs, p: CacheProblem) -> torch.Tensor:
    """bool (first two axes of the caches): True where the step must not read before it writes (a row at or past an
    item's length, an unselected cache item, a page slot past an item's rows, a page no table lists)."""
    mask = torch.ones(x.k_cache.shape[:2], dtype=torch.bool, device=x.k_cache.device)
    for b, n in enumerate(p.cache_seqlens):
        first, second = places(x, p, b, range(n))
        mask[first, second] = False
    return mask


def relaid(x: CacheInputs, p: CacheProblem, k_rows: torch.Tensor, v_rows: torch.Tensor) -> CacheInputs:
    """x with fresh caches laid out as x's, item b's logical rows replaced by ``k_rows[b]``, ``v_rows[b]`` (L, ...)
    from row 0 on (the other elements as in x)."""
    k_cache, v_cache = x.k_cache.clone(), x.v_cache.clone()
    for b in range(p.B):
        first, second = places(x, p, b, range(k_rows.shape[1]))
        k_cache[first, second], v_cache[first, second] = k_rows[b], v_rows[b]
    return x.replace(k_cache=k_cache, v_cache=v_cache)


def enlarged(x: CacheInputs, p: CacheProblem, extra: int) -> tuple:
    """``(inputs, problem)`` with ``extra`` more rows allocated to every item (contiguous: a longer cache; paged: more
    pages in each table row, new pages appended to the pool), every element there already the same."""
    p2 = p.replace(spare_rows=p.spare_rows + extra)
    g = generator(p.seed, 9)
    fresh = lambda t, shape: torch.randn(shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)  # noqa: E731
    if x.block_table is None:
        grow = lambda t: torch.cat([t, fresh(t, (t.shape[0], extra, *t.shape[2:]))], dim=1)  # noqa: E731
        return x.replace(k_cache=grow(x.k_cache), v_cache=grow(x.v_cache)), p2
    more = p2.max_pages - p.max_pages
    ids = torch.arange(more * p.B, dtype=x.block_table.dtype, device=x.block_table.device) + x.k_cache.shape[0]
    table = torch.cat([x.block_table, ids.view(p.B, more)], dim=1)  # (B, max_pages + more)
    grow = lambda t: torch.cat([t, fresh(t, (more * p.B, *t.shape[1:]))])  # noqa: E731
    return x.replace(k_cache=grow(x.k_cache), v_cache=grow(x.v_cache), block_table=table), p2
