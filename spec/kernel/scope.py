"""The problems a kernel law draws: :class:`KernelScope`, the kernel contract's counterpart of
:class:`attnspec.requirements.Scope`, built and narrowed the same way by :func:`attnspec.requirements.decide`.

Dimensions: ``dtype``; the options ``causal``, ``window``, ``softcap``, ``scale`` (softmax_scale passed),
``alibi`` (None, ``"heads"``, ``"batch"``), ``lse`` (return_lse); ``grouped`` (Hkv < Hq), ``distinct_dv``
(Dv != D), ``values`` (:data:`attnspec.kernel.problem.VALUES`), ``empty_rows`` (queries that see no key
may be drawn), ``longer`` (Lq > Lk may be drawn), ``unequal`` (Lq != Lk is required when only True).

``form``: the call drawn, ``"dense"`` (every entry point answers it) or the kernel's own entry point
(``"varlen"``, ``"kvcache"``; a requirement may ask for ``"native"``: the kernel's own). For those: ``seqused``
(seqused_k passed), ``tails`` (rows past cu_seqlens[-1]), ``zero_segments``, ``new_rows`` (k, v passed),
``paged`` (False: a contiguous cache; True: pages), ``batch_idx`` (cache_batch_idx), ``rotary`` (None or a pairing),
``splits`` (num_splits passed), ``spare`` (max_seqlen_* or the allocated cache larger than needed), ``unread``
(some memory the call must not read is drawn: a requirement that needs it says True).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from .declaration import DEVICE_DTYPES, KernelCapabilities
from .problem import VALUES

MAX_DRAWN_HEADS = 6


def _every_value(caps: KernelCapabilities, dtypes: tuple) -> dict:
    both = lambda claimed: (False, True) if claimed else (False,)  # noqa: E731
    return {
        "dtype": dtypes, "causal": both(caps.causal), "window": both(caps.window), "softcap": both(caps.softcap),
        "scale": both(caps.softmax_scale), "alibi": (None, "heads", "batch") if caps.alibi else (None,),
        "lse": both(caps.lse), "grouped": both(caps.grouped_kv), "distinct_dv": both(caps.distinct_value_dim),
        "values": VALUES, "empty_rows": both(caps.fully_masked_rows == "zeros"), "longer": both(caps.longer_queries),
        "unequal": (False, True), "form": tuple(dict.fromkeys(("dense", caps.entry))),
        "seqused": both(caps.entry == "varlen" and caps.seqused_k),
        "tails": both(caps.entry == "varlen" and caps.rows_past_cu_seqlens == "ignored"),
        "zero_segments": both(caps.zero_length_segments), "new_rows": both(caps.entry == "kvcache" and caps.new_kv),
        "paged": (False,) * caps.contiguous_cache + (True,) * (caps.entry == "kvcache" and caps.paged),
        "batch_idx": both(caps.entry == "kvcache" and caps.cache_batch_idx),
        "rotary": (None,) + (caps.rotary_pairings if caps.entry == "kvcache" and caps.rotary else ()),
        "splits": both(caps.entry != "dense" and caps.num_splits), "spare": (False, True),
        "unread": both(caps.entry == "kvcache" or (caps.entry == "varlen" and (
            caps.seqused_k or caps.rows_past_cu_seqlens == "ignored"))),
    }


@dataclass(frozen=True, eq=False)
class KernelScope:
    """Each dimension's allowed values for one kernel and device (see the module docstring); ``least`` holds
    the smallest ``batch``, ``heads`` and ``length`` drawn. Compared by identity, as :class:`Scope` is."""

    caps: KernelCapabilities
    device: str
    values: Mapping[str, tuple]
    least: Mapping[str, int] = field(default_factory=lambda: {"batch": 1, "heads": 1, "length": 1})
    explicit: frozenset = frozenset()

    @classmethod
    def of(cls, caps: KernelCapabilities, device: str = "cpu", dtypes: tuple | None = None) -> "KernelScope":
        dtypes = tuple(d for d in (dtypes or DEVICE_DTYPES[device]) if d in caps.dtypes)
        # The LSE is asked for by the laws about it only: a wrong LSE then fails those, not every law. The dense call
        # is drawn unless a law asks for the kernel's own; no law needs unread memory unless it says so.
        return cls(caps, device, {**_every_value(caps, dtypes), "lse": (False,), "form": ("dense",),
                                  "unread": (False,)})

    @property
    def max_heads(self) -> int:
        return MAX_DRAWN_HEADS

    def allowed(self, dim: str) -> tuple:
        return self.values[dim]

    def narrowed(self, **constraints) -> "KernelScope":
        """This scope with each named dimension limited to the values given; ``min_batch``, ``min_heads``,
        ``min_length`` raise the least value drawn."""
        values, least, explicit = dict(self.values), dict(self.least), set(self.explicit)
        every = _every_value(self.caps, self.values["dtype"])
        for name, wanted in constraints.items():
            if name.startswith("min_") and name[4:] in ("batch", "heads", "length"):
                least[name[4:]] = max(least[name[4:]], wanted)
                continue
            if name not in values:
                raise ValueError(f"{name}={wanted!r}: not a dimension of a kernel draw; known: "
                                 f"{', '.join(sorted(values))}, min_batch, min_heads, min_length")
            if name == "form" and wanted == "native":
                wanted = self.caps.entry
            wanted = wanted if isinstance(wanted, tuple) else (wanted,)
            base = values[name] if name in explicit else every[name]
            values[name] = tuple(v for v in base if v in wanted)
            explicit.add(name)
        return dataclasses.replace(self, values=values, least=least, explicit=frozenset(explicit))

    def empty(self) -> str | None:
        """The dimension left with no value to draw, or None if a problem can be drawn."""
        for dim, vs in self.values.items():
            if not vs:
                return dim
        if self.values["grouped"] == (True,) and self.least["heads"] > self.max_heads // 2:
            return "grouped"
        caps = self.caps
        longest = min(x for x in (caps.max_seqlen_q, caps.max_seqlen_k, 10**9) if x is not None)
        if self.least["length"] > longest:
            return "length"
        if self.values["unequal"] == (True,) and (caps.max_seqlen_q == 1 and caps.max_seqlen_k == 1):
            return "unequal"
        if caps.head_dims is not None and not any(d <= 256 for d in caps.head_dims):
            return "head_dims"
        return None

    def short(self) -> str:
        every = _every_value(self.caps, self.values["dtype"])
        parts = [f"{dim}={vs}" for dim, vs in self.values.items() if vs != every.get(dim)]
        parts += [f"at least {n} {k}" for k, n in self.least.items() if n > 1]
        return ", ".join(parts) or "every claimed problem"
