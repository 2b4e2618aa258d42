"""The law registry: :class:`Law`, the :func:`law` decorator, what laws may need, and ``LAWS``."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from hypothesis.errors import HypothesisException

from ..capabilities import ALL_DTYPES, Capabilities
from ..case import Case
from ..errors import ConformanceFailure, Mismatch
from ..strategies import problems
from ..vocabulary import FAMILIES, SEVERITIES

# What a failure means, most severe first: the matrix and the summary list findings in this order.


@dataclass(frozen=True)
class Law:
    name: str
    family: str
    fn: Callable[[Case], None]
    needs: tuple = ()
    draw: dict = field(default_factory=dict)
    devices: tuple = ("cpu", "cuda")
    dtypes: tuple = ALL_DTYPES  # where its comparisons can be informative (attnspec.tolerances)
    severity: str = "results"  # a key of SEVERITIES

    @property
    def statement(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def not_claimed(self, caps: Capabilities, device: str = "cpu", dtype: torch.dtype | None = None) -> list[str]:
        """The capabilities this law needs (on ``device``, in ``dtype``) that ``caps`` does not claim."""
        why = [] if device in caps.devices else [f"device {device}"]
        if device not in self.devices:
            why.append(f"a {' or '.join(d.upper() if d == 'cuda' else d for d in self.devices)} device "
                       f"(this law compares it with the CPU)")
        if dtype is not None and dtype not in caps.dtypes:
            why.append(f"dtype {str(dtype).removeprefix('torch.')}")
        if dtype is None and not set(caps.dtypes) & set(self.dtypes):
            why.append("float64 or float32 (attnspec cannot decide this law in lower precision, see attnspec.tolerances)")
        if dtype is not None and dtype not in self.dtypes:
            why.append(f"a dtype other than {str(dtype).removeprefix('torch.')} (attnspec cannot decide this law "
                       "there: its tolerance reaches the spread of the values compared, see attnspec.tolerances)")
        return why + [name for name in self.needs if not NEEDS[name](caps)]

    def problems(self, caps: Capabilities, device: str = "cpu", dtype: torch.dtype | None = None):
        """The Hypothesis strategy for this law's problems; ``dtype`` fixes the dtype (else it is drawn)."""
        if dtype is None:  # drawn among the dtypes both claimed and decidable
            caps = caps.replace(dtypes=tuple(d for d in caps.dtypes if d in self.dtypes))
            return problems(caps, device, **self.draw)
        return problems(caps, device, **{**self.draw, "dtype": dtype})

    def check(self, adapter, problem, device: str = "cpu") -> Case:
        """Apply the law to ``adapter`` on ``problem``; raise ConformanceFailure if it fails."""
        case = Case(adapter, problem, device, self.name, self.statement)
        with seeded_rng(problem.seed, device):  # dropout draws replay with the problem
            try:
                self.fn(case)
            except Mismatch as m:
                raise case.failure(m) from None
            except (ConformanceFailure, HypothesisException):  # a nested case's verdict; assume()
                raise
            except Exception as exc:  # the law's own code: an error that names where, never a verdict
                raise case.error(exc) from exc
        return case


@contextlib.contextmanager
def seeded_rng(seed: int, device: str):
    """Seed torch's global generator of the CPU (and of ``device`` if it is a GPU) and restore it after.

    Not ``torch.manual_seed``: that also seeds every accelerator backend, lazily, recording a
    stack trace each time (milliseconds per example on a CPU-only build)."""
    cpu_state = torch.get_rng_state()
    gpu = torch.device(device) if torch.device(device).type == "cuda" else None
    gpu_state = torch.cuda.get_rng_state(gpu) if gpu is not None else None
    torch.default_generator.manual_seed(seed)
    if gpu is not None:
        with torch.cuda.device(gpu):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu_state, gpu)


def _batched(c):
    return any(lay != "unbatched" for lay in c.layouts)


NEEDS: dict[str, Callable[[Capabilities], bool]] = {
    "masks": lambda c: c.any_mask,
    "key_padding_mask": lambda c: bool(c.key_padding_mask),
    "attn_mask": lambda c: bool(c.attn_mask),
    "float attn_mask": lambda c: "float" in c.attn_mask,
    "float key_padding_mask": lambda c: "float" in c.key_padding_mask,
    "bool and float masks": lambda c: ({"bool", "float"} <= set(c.key_padding_mask)
                                       or {"bool", "float"} <= set(c.attn_mask)),
    "3-D attn_mask": lambda c: bool(c.attn_mask) and c.attn_mask_3d,
    "cross-attention": lambda c: c.cross_attention,
    "distinct key and value tensors": lambda c: c.cross_attention and not c.key_is_value,
    "masks the module checks itself": lambda c: c.any_mask and c.mask_validation,
    "embed_dim and num_heads in the constructor": lambda c: c.embed_dim_and_heads,
    "empty sequences": lambda c: "empty sequences" in c.edge_cases,
    "fully masked rows": lambda c: "fully masked rows" in c.edge_cases,
    "large inputs": lambda c: "large inputs" in c.edge_cases,
    "need_weights": lambda c: c.need_weights,
    "per-head weights": lambda c: c.need_weights and c.per_head_weights,
    "gradients": lambda c: c.gradients,
    "dropout": lambda c: c.dropout,
    "batched input": _batched,
    "unbatched and batched input": lambda c: "unbatched" in c.layouts and _batched(c),
    "seq_first and batch_first": lambda c: {"seq_first", "batch_first"} <= set(c.layouts),
    "several heads": lambda c: c.max_heads is None or c.max_heads >= 2,
    "one head": lambda c: c.min_heads == 1,
    "no head mixing": lambda c: not c.head_mixing,
    "nn.MultiheadAttention's API": lambda c: not c.head_mixing and c.causal != "always" and c.rope is None,
    "attention that can be order-free": lambda c: c.causal != "always",
    "the causal flag": lambda c: c.causal_flag,
    "the causal flag with a key_padding_mask": lambda c: (c.causal_flag and bool(c.key_padding_mask)
                                                          and "key_padding_mask" in c.causal_masks),
    "the causal flag with an attn_mask": lambda c: (c.causal_flag and bool(c.attn_mask)
                                                    and "attn_mask" in c.causal_masks),
    "cross-attention or the causal flag": lambda c: c.cross_attention or c.causal_flag,
    "num_kv_heads": lambda c: c.num_kv_heads,
    "a sliding window": lambda c: c.window,
    "position-free attention (no RoPE: logits depend on positions)": lambda c: c.rope is None,
    "rotary positions (RoPE)": lambda c: c.rope is not None,
    "incremental decoding (new_cache and decode)": lambda c: c.decoding and _batched(c),  # batch-first (N, T, E)
    "incremental decoding of a batch with padding": lambda c: c.decoding and _batched(c),
    "a fully-masked-row policy": lambda c: c.fully_masked_rows != "unspecified",
    "cpu and cuda": lambda c: {"cpu", "cuda"} <= set(c.devices),
}

LAWS: dict[str, Law] = {}


def law(family: str, *, needs: tuple = (), devices: tuple = ("cpu", "cuda"), dtypes: tuple = ALL_DTYPES,
        severity: str = "results", **draw):
    """Register a law function under ``family``; ``draw`` constrains the problems drawn for it.

    ``devices``: where the law applies (a cross-device law runs on CUDA only).
    ``dtypes``: where attnspec can decide it (e.g. :data:`attnspec.tolerances.HIGH_PRECISION`).
    ``severity``: what a failure means (:data:`SEVERITIES`).
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}, but should be one of {FAMILIES}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r}, but should be one of {tuple(SEVERITIES)}")
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"needs={unknown!r}: unknown; known: {sorted(NEEDS)}")

    def register(fn):
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"law {fn.__name__} has no docstring: its first line must state the law")
        LAWS[fn.__name__] = Law(fn.__name__, family, fn, tuple(needs), draw, tuple(devices), tuple(dtypes), severity)
        return fn

    return register
