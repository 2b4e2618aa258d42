"""A varlen call: :class:`VarlenProblem`, its packed tensors (:func:`make_varlen_inputs`), and each segment's dense
problem and tensors (what every varlen law is derived from).

Names: B segments (sequences); segment b has ``seqlens_q[b]`` queries and ``seqlens_k[b]`` keys, of which the
first ``seqused_k[b]`` are used (all, without ``seqused_k``). Packed, q is (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv,
Dv); segment b's queries are rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``. ``tail_q``/``tail_k`` rows follow
``cu_seqlens[-1]`` (rows no segment holds); ``max_seqlen_extra`` is how far ``max_seqlen_*`` exceed the longest
segment. Every value comes from the seed, as a dense problem's do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from .problem import KernelInputs, KernelProblem, PackedProblem, generator, shown, values64


def _lengths(name: str, value) -> tuple:
    value = tuple(value)
    if not all(isinstance(n, int) and n >= 0 for n in value):
        raise ValueError(f"{name}={value!r}, but should be lengths (ints >= 0)")
    return value


@dataclass(frozen=True)
class VarlenProblem(PackedProblem):
    """A :class:`KernelProblem` whose batch is B segments of their own lengths (see the module docstring); B, Lq
    and Lk are derived (the number of segments, the longest query and used key segments). ``num_splits``: passed
    when not None."""

    seqlens_q: tuple = (1,)
    seqlens_k: tuple = (1,)
    seqused_k: tuple | None = None
    tail_q: int = 0
    tail_k: int = 0
    max_seqlen_extra: int = 0
    num_splits: int | None = None
    DERIVED: ClassVar[tuple] = ("B", "Lq", "Lk")

    def __post_init__(self):
        q, k = _lengths("seqlens_q", self.seqlens_q), _lengths("seqlens_k", self.seqlens_k)
        if not q or len(q) != len(k):
            raise ValueError(f"seqlens_q={q!r} and seqlens_k={k!r}, but should name the same segments, at least one")
        used = None if self.seqused_k is None else _lengths("seqused_k", self.seqused_k)
        if used is not None and (len(used) != len(k) or any(u > n for u, n in zip(used, k))):
            raise ValueError(f"seqused_k={used!r}, but should be at most each segment's keys {k!r}")
        for name, value in (("seqlens_q", q), ("seqlens_k", k), ("seqused_k", used)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "B", len(q))
        object.__setattr__(self, "Lq", max(q))
        object.__setattr__(self, "Lk", max(self.used_k))
        super().__post_init__()

    def __repr__(self) -> str:
        return shown(self)

    @property
    def used_k(self) -> tuple:
        return self.seqlens_k if self.seqused_k is None else self.seqused_k

    @property
    def cu_q(self) -> list:
        return [sum(self.seqlens_q[:b]) for b in range(self.B + 1)]

    @property
    def cu_k(self) -> list:
        return [sum(self.seqlens_k[:b]) for b in range(self.B + 1)]

    @property
    def max_seqlen_q(self) -> int:
        return max(self.seqlens_q) + self.max_seqlen_extra

    @property
    def max_seqlen_k(self) -> int:
        return max(self.seqlens_k) + self.max_seqlen_extra

    def segment(self, b: int) -> KernelProblem:
        """Segment ``b`` as a dense problem of one item: its queries over its used keys."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(KernelProblem)}
        return KernelProblem(**{**fields, "B": 1, "Lq": self.seqlens_q[b], "Lk": self.used_k[b],
                                "alibi": None if self.alibi is None else "heads"})

    def empty_rows(self) -> torch.Tensor:
        """Queries that see no key, bool (Tq,) over the segments' rows (not the tail)."""
        rows = [self.segment(b).empty_rows() for b in range(self.B)]
        return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.bool)

    def short(self) -> str:
        parts = [f"segments of {list(self.seqlens_q)} queries over {list(self.seqlens_k)} keys"]
        parts += [f"seqused_k={list(self.seqused_k)}"] if self.seqused_k is not None else []
        parts += [f"{self.tail_q} q rows and {self.tail_k} k rows past cu_seqlens[-1]"] if self.tail_q or self.tail_k \
            else []
        parts += [f"max_seqlen_* {self.max_seqlen_extra} above the longest"] if self.max_seqlen_extra else []
        parts += [f"num_splits={self.num_splits}"] if self.num_splits is not None else []
        dense = super().short().split(", ")
        return ", ".join(parts + [d for d in dense if not d.startswith(("B=", "Lq=", "Lk="))])


@dataclass
class VarlenInputs:
    """The tensors of one varlen call: packed q, k, v; ``cu_seqlens_q``, ``cu_seqlens_k`` and ``seqused_k`` int32
    (or None); ALiBi slopes (Hq,) or (B, Hq) float32, or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    seqused_k: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None

    def tensors(self) -> dict:
        return {n: t for n, t in vars(self).items() if t is not None}

    def replace(self, **changes) -> "VarlenInputs":
        return VarlenInputs(**{**vars(self), **changes})


def make_varlen_inputs(p: VarlenProblem, device="cpu") -> VarlenInputs:
    """The problem's packed tensors in its dtype on ``device`` (values as :func:`values64` makes them)."""
    Tq, Tk = sum(p.seqlens_q) + p.tail_q, sum(p.seqlens_k) + p.tail_k
    flat = values64(KernelProblem(B=1, Lq=Tq, Lk=Tk, Hq=p.Hq, Hkv=p.Hkv, D=p.D, Dv=p.Dv, values=p.values, seed=p.seed))
    cast = lambda t: t[0].to(device=device, dtype=p.dtype).contiguous()  # noqa: E731  (1, T, H, ·) -> (T, H, ·)
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    slopes = None
    if p.alibi is not None:  # positive slopes, per head (Hq,) or per segment and head (B, Hq), float32 by contract
        shape = (p.Hq,) if p.alibi == "heads" else (p.B, p.Hq)
        slopes = (0.1 + 0.9 * torch.rand(shape, generator=generator(p.seed, 6), dtype=torch.float64)).float()
        slopes = slopes.to(device)
    return VarlenInputs(cast(flat.q), cast(flat.k), cast(flat.v), ints(p.cu_q), ints(p.cu_k),
                        None if p.seqused_k is None else ints(p.seqused_k), slopes)


def segment_inputs(x: VarlenInputs, p: VarlenProblem, b: int) -> KernelInputs:
    """Segment ``b``'s tensors as a dense call's (views): q (1, Lq_b, Hq, D), k and v (1, used_b, Hkv, ·)."""
    q0, k0 = p.cu_q[b], p.cu_k[b]
    slopes = x.alibi_slopes if x.alibi_slopes is None or x.alibi_slopes.dim() == 1 else x.alibi_slopes[b]
    return KernelInputs(x.q[q0:q0 + p.seqlens_q[b]][None], x.k[k0:k0 + p.used_k[b]][None],
                        x.v[k0:k0 + p.used_k[b]][None], slopes)


def from_segments(p: VarlenProblem, segments: list, x: VarlenInputs) -> VarlenInputs:
    """Packed inputs of ``p`` whose segments hold ``segments`` (dense :class:`KernelInputs` of one item each, their
    keys ``p.seqlens_k[b]`` long), with ``x``'s tail rows; slopes from the first segment's, or ``x``'s."""
    Tq, Tk = p.cu_q[-1], p.cu_k[-1]
    q = torch.cat([s.q[0] for s in segments] + [x.q[Tq:]])  # (Tq + tail, Hq, D)
    k = torch.cat([s.k[0] for s in segments] + [x.k[Tk:]])  # (Tk + tail, Hkv, D)
    v = torch.cat([s.v[0] for s in segments] + [x.v[Tk:]])
    return x.replace(q=q, k=k, v=v)
