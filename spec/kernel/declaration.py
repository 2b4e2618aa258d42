"""What a kernel claims: :class:`KernelCapabilities`, read from its signature and narrowed by a declaration.

A function with the canonical signature (:data:`SIGNATURE`) claims, undeclared, everything in it: on the
CPU float64, float32 and bfloat16, grouped-query heads, a value width other than the key width, any head
width and length, every keyword option it has, the LSE, gradients for q, k and v, and any strides. A
keyword it lacks is an option it does not claim. A declaration narrows the claim, never widens it:

    @attnspec.declare_kernel(dtypes=("float16", "bfloat16"), head_dims=range(8, 257, 8), backward=False)
    def attn(q, k, v, *, causal=False, softmax_scale=None, return_lse=False): ...

or, without importing attnspec, ``attn.attnspec_kernel = {"dtypes": ["float32"], "head_dims": [64, 128]}``.
A claim narrowed is a promise to refuse the rest: outside its declared dtypes, head widths and lengths a
kernel must raise (the bad-input laws check it), never compute silently.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

# The canonical keyword options, flash-attn 2's flash_attn_func without dropout (return_lse as FlexAttention names it).
OPTIONS = ("causal", "softmax_scale", "window_size", "softcap", "alibi_slopes", "return_lse")
SIGNATURE = ("attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, "
             "alibi_slopes=None, return_lse=False)")
# The dtypes a kernel may claim on each device; float16 on the CPU too (a Triton kernel under the interpreter).
DEVICE_DTYPES = {"cpu": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
                 "cuda": (torch.float64, torch.float32, torch.bfloat16, torch.float16)}
DEFAULT_DTYPES = (torch.float64, torch.float32, torch.bfloat16)
ALIGNMENTS = ("bottom-right", "top-left")
LSE_BASES = ("e", "2")
LSE_LAYOUTS = ("BHL", "BLH")  # (B, Hq, Lq), flash-attn's and FlexAttention's; or (B, Lq, Hq)
STRIDES = ("any", "unit-last-dim", "contiguous")
FULLY_MASKED_ROWS = ("zeros", "unspecified")
# Option claims and the keyword each needs in the signature.
OPTION_CLAIMS = {"causal": "causal", "softmax_scale": "softmax_scale", "window": "window_size", "softcap": "softcap",
                 "alibi": "alibi_slopes", "lse": "return_lse"}


class DeclarationError(ValueError):
    """A kernel declaration that names an unknown claim or a value it cannot take."""


class SignatureError(DeclarationError):
    """A function whose signature is not the canonical one (so it is no kernel, or needs an adapter)."""


@dataclass(frozen=True)
class KernelCapabilities:
    """Everything a kernel claims (see the module docstring); each field's default is the undeclared claim.

    * ``dtypes``, ``devices``: where it computes.
    * ``head_dims``: None (any width), a tuple of widths, or a ``range`` (its step a multiple).
    * ``distinct_value_dim``: v's width Dv may differ from q's and k's D; ``grouped_kv``: Hkv may be fewer than Hq.
    * ``max_seqlen_q``, ``max_seqlen_k``: the longest sequences (None: any).
    * ``causal_alignment``: ``"bottom-right"`` (the contract: the last query sees every key) or ``"top-left"``;
      a window is placed the same way. ``longer_queries``: Lq > Lk is supported.
    * ``causal``, ``softmax_scale``, ``window``, ``softcap``, ``alibi``, ``lse``: the options claimed.
    * ``lse_base`` (``"e"`` or ``"2"``) and ``lse_layout`` (``"BHL"`` or ``"BLH"``): how the LSE comes back;
      the suite converts it to natural log, (B, Hq, Lq).
    * ``backward``: gradients for q, k and v; ``deterministic_backward``: bit-identical on repeats.
    * ``strides``: the inputs accepted, ``"any"``, ``"unit-last-dim"`` or ``"contiguous"``; others must be
      refused with an error or computed exactly as the contiguous call.
    * ``fully_masked_rows``: ``"zeros"`` (output 0, LSE -inf: the contract) or ``"unspecified"`` (never drawn).
    * ``tolerance_factor``: widens every bound (a quantised kernel: int8 or fp8 products).
    """

    contract: ClassVar[str] = "kernel"

    dtypes: tuple = DEFAULT_DTYPES
    devices: tuple = ("cpu",)
    head_dims: tuple | range | None = None
    distinct_value_dim: bool = True
    grouped_kv: bool = True
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    causal_alignment: str = "bottom-right"
    longer_queries: bool = True
    causal: bool = True
    softmax_scale: bool = True
    window: bool = True
    softcap: bool = True
    alibi: bool = True
    lse: bool = True
    lse_base: str = "e"
    lse_layout: str = "BHL"
    backward: bool = True
    deterministic_backward: bool = True
    strides: str = "any"
    fully_masked_rows: str = "zeros"
    tolerance_factor: float = 1.0
    deviations: tuple = ()  # the module contract's known deviations; none are declared for kernels yet

    def __post_init__(self):
        for name, value in _checked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> "KernelCapabilities":
        return dataclasses.replace(self, **changes)

    def allows_head_dim(self, d: int) -> bool:
        return self.head_dims is None or d in self.head_dims

    def allows_length(self, Lq: int, Lk: int) -> bool:
        return (self.max_seqlen_q is None or Lq <= self.max_seqlen_q) and \
            (self.max_seqlen_k is None or Lk <= self.max_seqlen_k)

    @property
    def narrowed(self) -> dict:
        """The claims that differ from the undeclared ones, for messages."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "deviations" and getattr(self, f.name) != f.default}


def _bool(name, value):
    if not isinstance(value, bool):
        raise DeclarationError(f"{name}={value!r}, but should be True or False")
    return value


def _choice(choices):
    def check(name, value):
        if value not in choices:
            raise DeclarationError(f"{name}={value!r}, but should be one of {choices}")
        return value
    return check


def _dtype(name, value):
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        value = getattr(torch, value.removeprefix("torch."))
    if value not in DEVICE_DTYPES["cpu"]:
        raise DeclarationError(f"{name} names {value!r}, but should name float64, float32, bfloat16 or float16 "
                               "(a torch.dtype or its name)")
    return value


def _sequence(name, value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = (value,)
    value = tuple(value)
    if not value:
        raise DeclarationError(f"{name}=(): an empty claim; leave the kernel uncertified instead")
    return value


def _each(check):
    """``check`` applied to every element of a sequence claim; an error names the whole value too."""
    def checked(name, value):
        items = _sequence(name, value)
        try:
            return tuple(dict.fromkeys(check(name, item) for item in items))
        except DeclarationError as exc:
            raise DeclarationError(f"{name}={value!r}: {exc}") from None
    return checked


def _dtypes(name, value):
    return _each(_dtype)(name, value)


def _devices(name, value):
    value = _sequence(name, value)
    bad = [d for d in value if d not in DEVICE_DTYPES]
    if bad:
        raise DeclarationError(f"{name}={value!r}: unknown device {bad[0]!r}; expected 'cpu' and/or 'cuda'")
    return tuple(dict.fromkeys(value))


def _positive_int(name, value):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise DeclarationError(f"{name}={value!r}, but should be a positive int")
    return value


def _head_dims(name, value):
    if value is None:
        return None
    if isinstance(value, range):
        if len(value) == 0 or value.start < 1 or value.step < 1:
            raise DeclarationError(f"{name}={value!r}, but should be a non-empty range of positive widths, "
                                   "e.g. range(8, 257, 8)")
        return value
    return tuple(sorted(_each(_positive_int)(name, value)))


def _max_length(name, value):
    return None if value is None else _positive_int(name, value)


def _factor(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 1):
        raise DeclarationError(f"{name}={value!r}, but should be a finite number >= 1 (1: the ordinary bound)")
    return float(value)


CHECKS = {
    "dtypes": _dtypes, "devices": _devices, "head_dims": _head_dims, "distinct_value_dim": _bool,
    "grouped_kv": _bool, "max_seqlen_q": _max_length, "max_seqlen_k": _max_length,
    "causal_alignment": _choice(ALIGNMENTS), "longer_queries": _bool, "causal": _bool, "softmax_scale": _bool,
    "window": _bool, "softcap": _bool, "alibi": _bool, "lse": _bool, "lse_base": _choice(LSE_BASES),
    "lse_layout": _choice(LSE_LAYOUTS), "backward": _bool, "deterministic_backward": _bool,
    "strides": _choice(STRIDES), "fully_masked_rows": _choice(FULLY_MASKED_ROWS), "tolerance_factor": _factor,
    "deviations": lambda name, value: tuple(_deviation(name, d) for d in value),
}


def _deviation(name, value):
    from ..capabilities import Deviation
    try:
        return Deviation.of(value)
    except ValueError as exc:
        raise DeclarationError(f"{name}: {exc}") from None


def _checked(claims: dict) -> dict:
    """``claims`` with each value validated and normalised; DeclarationError naming the first bad one."""
    unknown = sorted(set(claims) - set(CHECKS))
    if unknown:
        raise DeclarationError(f"{unknown[0]}={claims[unknown[0]]!r}: not a kernel claim; known: "
                               f"{', '.join(n for n in CHECKS if n != 'deviations')}")
    if isinstance(claims.get("lse_base"), int):  # lse_base=2 reads as "2"
        claims = {**claims, "lse_base": str(claims["lse_base"])}
    return {name: CHECKS[name](name, value) for name, value in claims.items()}


def declare_kernel(**claims):
    """Narrow what the decorated kernel claims (the fields of :class:`KernelCapabilities`); returns it unchanged.

    Validated at once: a bad declaration raises :class:`DeclarationError` naming the argument and value."""
    checked = _checked(claims)

    def mark(fn):
        fn.attnspec_kernel = dict(checked)
        return fn

    return mark


def signature_claims(fn, where: str) -> dict:
    """The options ``fn``'s signature claims, ``{claim: bool}``; DeclarationError if it is not canonical."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"{where}: cannot read its signature ({exc}); expected {SIGNATURE}") from None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 3 and not variadic:
        raise SignatureError(f"{where}: takes {len(positional)} positional argument(s) "
                               f"({', '.join(p.name for p in positional) or 'none'}), but a kernel takes q, k, v; "
                               f"expected {SIGNATURE}")
    required = [p.name for p in params[3:] if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise SignatureError(f"{where}: requires {required[0]!r}, which is not an argument of {SIGNATURE}")
    # a fourth positional parameter that is no canonical option (softmax's dim) means another signature;
    # extra keyword-only ones with defaults are never passed, and harmless
    other = [p.name for p in positional[3:] if p.name not in OPTIONS]
    if other:
        raise SignatureError(f"{where}: its parameter {other[0]!r} is not an option of {SIGNATURE}; a function "
                             "with another signature needs a kernel adapter (attnspec.kernel.adapters)")
    names = {p.name for p in params}
    anything = any(p.kind == p.VAR_KEYWORD for p in params)  # **kwargs: every option
    return {claim: anything or keyword in names for claim, keyword in OPTION_CLAIMS.items()}


def capabilities_of(fn, where: str) -> KernelCapabilities:
    """What ``fn`` claims: its signature's options, narrowed by its ``attnspec_kernel`` declaration."""
    options = signature_claims(fn, where)
    declared = getattr(fn, "attnspec_kernel", None) or {}
    if isinstance(declared, KernelCapabilities):
        declared = declared.narrowed
    if not isinstance(declared, dict):
        raise DeclarationError(f"{where}.attnspec_kernel={declared!r}, but should be a dict of claims "
                               "(attnspec.declare_kernel's fields) or an attnspec.KernelCapabilities")
    try:
        declared = _checked(dict(declared))
    except DeclarationError as exc:
        raise DeclarationError(f"{where}: {exc}") from None
    widened = [c for c, has in options.items() if not has and declared.get(c) is True]
    if widened:
        raise DeclarationError(f"{where}: declares {widened[0]}=True, but its signature has no "
                               f"{OPTION_CLAIMS[widened[0]]!r} keyword (a declaration narrows, never widens)")
    lse_only = [c for c in ("lse_base", "lse_layout") if c in declared and not options["lse"]]
    if lse_only:
        raise DeclarationError(f"{where}: declares {lse_only[0]}={declared[lse_only[0]]!r}, but has no 'return_lse' "
                               "keyword")
    return KernelCapabilities(**{**options, **declared})
