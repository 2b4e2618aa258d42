"""One call of a kernel: :class:`KernelProblem`, and the tensors it is made of (:func:`make_inputs`).

Names: B batch, Lq queries, Lk keys, Hq query heads, Hkv key/value heads (query head h reads kv head
``h // (Hq // Hkv)``), D the width of queries and keys, Dv the width of values. Tensors are laid out as
the contract takes them: q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv). Every value comes
from the seed, made in float64 on the CPU, then cast and moved, so a failure replays on any device.

``values`` picks the family the queries and keys come from:

* ``"gaussian"``: independent standard normals;
* ``"low-rank"``: queries and keys in a 2-dimensional subspace (logits of rank 2, many near-ties);
* ``"shared-mean"``: keys sharing a large common mean (every logit of a row shifted by one large amount);
* ``"large"``: queries scaled so logits reach the hundreds (a softmax that skips the row max overflows).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar
from dataclasses import dataclass

import torch

from .. import masks
from ..config import _non_default

VALUES = ("gaussian", "low-rank", "shared-mean", "large")
ALIBI = (None, "heads", "batch")  # slopes (Hq,) or (B, Hq)
LARGE_LOGITS = 40.0  # "large" queries are this many times larger: logits of standard deviation 40


@dataclass(frozen=True)
class KernelProblem:
    """Shapes, options, dtype and seed of one kernel call (see the module docstring).

    * ``window``: ``(left, right)`` passed as ``window_size`` (-1: unbounded), or None (not passed).
    * ``softcap``: passed when > 0; ``scale``: passed as ``softmax_scale`` when not None.
    * ``alibi``: :data:`ALIBI`; ``return_lse``: the LSE is asked for.
    * ``alignment``: where the causal diagonal and the window sit when Lq != Lk (the kernel's declared one).
    """

    B: int = 1
    Lq: int = 1
    Lk: int = 1
    Hq: int = 1
    Hkv: int = 1
    D: int = 4
    Dv: int | None = None
    dtype: torch.dtype = torch.float64
    causal: bool = False
    window: tuple | None = None
    softcap: float = 0.0
    scale: float | None = None
    alibi: str | None = None
    return_lse: bool = False
    values: str = "gaussian"
    alignment: str = "bottom-right"
    seed: int = 0

    def __post_init__(self):
        for name in ("B", "Hq", "Hkv", "D"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be a positive int")
        if self.Hq % self.Hkv:
            raise ValueError(f"Hq={self.Hq} is not a multiple of Hkv={self.Hkv}")
        if self.values not in VALUES or self.alibi not in ALIBI:
            raise ValueError(f"values={self.values!r} / alibi={self.alibi!r}, but should be in {VALUES} / {ALIBI}")
        if self.window is not None:
            object.__setattr__(self, "window", tuple(self.window))

    def __repr__(self) -> str:
        return _non_default(self)

    @property
    def dv(self) -> int:
        return self.D if self.Dv is None else self.Dv

    @property
    def softmax_scale(self) -> float:
        return self.D ** -0.5 if self.scale is None else self.scale

    def replace(self, **changes) -> "KernelProblem":
        return dataclasses.replace(self, **changes)

    def options(self) -> dict:
        """The keyword options of the call, only those that differ from the defaults."""
        out = {}
        if self.causal:
            out["causal"] = True
        if self.scale is not None:
            out["softmax_scale"] = self.scale
        if self.window is not None:
            out["window_size"] = self.window
        if self.softcap:
            out["softcap"] = self.softcap
        if self.return_lse:
            out["return_lse"] = True
        return out

    def hidden(self, device=None) -> torch.Tensor:
        """Which keys each query cannot see, bool (Lq, Lk), True = hidden (the causal flag and the window)."""
        left, right = self.window if self.window is not None else (-1, -1)
        window = (None if left < 0 else left, 0 if self.causal else (None if right < 0 else right))
        found = masks.position_mask(self.Lq, self.Lk, is_causal=self.causal, window=window,
                                    alignment=self.alignment, device=device)
        return torch.zeros(self.Lq, self.Lk, dtype=torch.bool, device=device) if found is None else found

    def empty_rows(self) -> torch.Tensor:
        """Queries that see no key at all, bool (Lq,)."""
        return self.hidden().all(dim=1) if self.Lk else torch.ones(self.Lq, dtype=torch.bool)

    def to_dict(self) -> dict:
        """The fields that differ from their defaults, JSON-ready; :meth:`from_dict` reads it back."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "KernelProblem":
        fields = dict(data)
        if "dtype" in fields:
            fields["dtype"] = getattr(torch, fields["dtype"])
        return cls(**fields)

    def short(self) -> str:
        """One line naming every field that matters, for failure messages."""
        parts = [f"B={self.B}", f"Lq={self.Lq}", f"Lk={self.Lk}", f"Hq={self.Hq}", f"Hkv={self.Hkv}", f"D={self.D}"]
        parts += [f"Dv={self.Dv}"] if self.Dv is not None else []
        parts.append(str(self.dtype).removeprefix("torch."))
        if self.causal:
            parts.append("causal" + (f" ({self.alignment})" if self.Lq != self.Lk else ""))
        if self.window is not None:
            parts.append(f"window_size={self.window}" + (f" ({self.alignment})" if self.Lq != self.Lk else ""))
        if self.softcap:
            parts.append(f"softcap={self.softcap:g}")
        if self.scale is not None:
            parts.append(f"softmax_scale={self.scale:g}")
        if self.alibi:
            parts.append(f"alibi_slopes {'(Hq,)' if self.alibi == 'heads' else '(B, Hq)'}")
        if self.return_lse:
            parts.append("return_lse")
        if self.values != "gaussian":
            parts.append(f"{self.values} values")
        parts.append(f"seed={self.seed}")
        return ", ".join(parts)


class PackedProblem(KernelProblem):
    """What a varlen problem and a cache-step problem share: a ``num_splits`` option, and fields derived from
    the others (``DERIVED``) that their dicts leave out."""

    DERIVED: ClassVar[tuple] = ()

    def options(self) -> dict:
        return {**super().options(), **({"num_splits": self.num_splits} if self.num_splits is not None else {})}

    def to_dict(self) -> dict:
        return {n: list(v) if isinstance(v, tuple) else v for n, v in super().to_dict().items()
                if n not in self.DERIVED}

    @classmethod
    def from_dict(cls, data: dict) -> "PackedProblem":
        return super().from_dict({n: v for n, v in data.items() if n not in cls.DERIVED})


@dataclass
class KernelInputs:
    """The tensors of one call: q, k, v, and ALiBi slopes (float32) or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    alibi_slopes: torch.Tensor | None = None

    def tensors(self) -> dict:
        return {n: t for n, t in vars(self).items() if t is not None}

    def replace(self, **changes) -> "KernelInputs":
        return KernelInputs(**{**vars(self), **changes})


def shown(p) -> str:
    """``Name(field=value, ...)``: the fields that differ from their defaults, those a subclass derives
    (``DERIVED``) left out; what a repro snippet constructs again."""
    return _non_default(p, skip=getattr(p, "DERIVED", ()))


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) of one problem's seed."""
    return torch.Generator("cpu").manual_seed(seed * 7919 + stream)


def values64(p: KernelProblem) -> KernelInputs:
    """The problem's tensors in float64 on the CPU (see the module docstring for ``values``)."""
    g = generator(p.seed)
    q = torch.randn(p.B, p.Lq, p.Hq, p.D, generator=g, dtype=torch.float64)  # (B, Lq, Hq, D)
    k = torch.randn(p.B, p.Lk, p.Hkv, p.D, generator=g, dtype=torch.float64)  # (B, Lk, Hkv, D)
    v = torch.randn(p.B, p.Lk, p.Hkv, p.dv, generator=g, dtype=torch.float64)  # (B, Lk, Hkv, Dv)
    if p.values == "low-rank":  # rows of q and k inside one random 2-dimensional subspace
        basis = torch.randn(2, p.D, generator=g, dtype=torch.float64) / 2 ** 0.5  # (2, D)
        q = q[..., :2] @ basis if p.D > 2 else q
        k = k[..., :2] @ basis if p.D > 2 else k
    elif p.values == "shared-mean":  # every key offset by one mean, 4 times a key's size
        k = k + 4.0 * torch.randn(p.D, generator=g, dtype=torch.float64)
    elif p.values == "large":
        q = q * LARGE_LOGITS
    slopes = None
    if p.alibi is not None:  # positive slopes, per head (Hq,) or per item and head (B, Hq), float32 by contract
        shape = (p.Hq,) if p.alibi == "heads" else (p.B, p.Hq)
        slopes = (0.1 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)).float()
    return KernelInputs(q, k, v, slopes)


def make_inputs(p: KernelProblem, device="cpu") -> KernelInputs:
    """The problem's tensors in its dtype on ``device``; the slopes stay float32."""
    x = values64(p)
    cast = lambda t: t.to(device=device, dtype=p.dtype).contiguous()  # noqa: E731
    slopes = None if x.alibi_slopes is None else x.alibi_slopes.to(device)
    return KernelInputs(cast(x.q), cast(x.k), cast(x.v), slopes)
