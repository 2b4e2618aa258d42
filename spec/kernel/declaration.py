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
# The three entry points, told apart by their parameters' names: cu_seqlens_q (varlen), k_cache (the cache step).
ENTRIES = ("dense", "varlen", "kvcache")
VARLEN_SIGNATURE = ("attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k=None, "
                    "causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, "
                    "num_splits=0, return_lse=False)")
CACHE_SIGNATURE = ("attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, cache_batch_idx=None, "
                   "block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False, "
                   "softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0, "
                   "return_lse=False)")
SIGNATURES = {"dense": SIGNATURE, "varlen": VARLEN_SIGNATURE, "kvcache": CACHE_SIGNATURE}
# The parameters every call passes: the first three by position, the others by keyword.
PASSED = {"dense": ("q", "k", "v"),
          "varlen": ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),
          "kvcache": ("q", "k_cache", "v_cache", "cache_seqlens")}
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
# Each entry point's claims -> the keywords they need, all of them.
ENTRY_CLAIMS = {
    "dense": {claim: (keyword,) for claim, keyword in OPTION_CLAIMS.items()},
    "varlen": {**{claim: (keyword,) for claim, keyword in OPTION_CLAIMS.items()}, "seqused_k": ("seqused_k",),
               "num_splits": ("num_splits",)},
    "kvcache": {**{claim: (keyword,) for claim, keyword in OPTION_CLAIMS.items()}, "new_kv": ("k", "v"),
                "cache_batch_idx": ("cache_batch_idx",), "paged": ("block_table",),
                "rotary": ("rotary_cos", "rotary_sin"), "num_splits": ("num_splits",)},
}
ROTARY_PAIRINGS = ("interleaved", "rotate_half")  # (x[2i], x[2i+1]) pairs (flash-attn's default), or (x[i], x[i + r/2])
ROTARY_QUERIES = ("per-token", "flash-attn")
TAIL_ROWS = ("ignored", "refused")
UNUSED_GRADIENTS = ("zero", "finite")
HINTS = ("max_seqlen", "cache_length", "num_splits")

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

    The entry point (``entry``, :data:`ENTRIES`) comes from the signature; docs/kernels_varlen.md says what
    the varlen and cache-step claims mean:

    * varlen: ``seqused_k``, ``num_splits`` (keywords); ``zero_length_segments``; ``rows_past_cu_seqlens``
      (:data:`TAIL_ROWS`: rows of q, k, v past ``cu_seqlens[-1]`` are never read, or refused with an error);
      ``unused_gradients`` (:data:`UNUSED_GRADIENTS`: the gradient rows of tokens no segment uses).
    * the cache step: ``new_kv`` (k, v), ``cache_batch_idx``, ``paged`` (block_table), ``rotary``
      (rotary_cos, rotary_sin) and ``num_splits`` (keywords); ``contiguous_cache`` (a (B, S, Hkv, D) cache is
      taken, not only pages); ``page_sizes`` (None: any; a tuple or a ``range``); ``rotary_pairings``
      (:data:`ROTARY_PAIRINGS`); ``rotary_queries`` (:data:`ROTARY_QUERIES`: query i turns at
      ``cache_seqlens + i``, or, flash-attn's, at ``cache_seqlens`` for every query of a call neither causal
      nor windowed).
    * ``bitwise_hints`` (of :data:`HINTS`): the hints whose value leaves the result bit-identical, not only
      within the bound (``max_seqlen_*``, the allocated cache length, ``num_splits``).
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
    entry: str = "dense"
    seqused_k: bool = True
    num_splits: bool = True
    zero_length_segments: bool = True
    rows_past_cu_seqlens: str = "ignored"
    unused_gradients: str = "zero"
    new_kv: bool = True
    cache_batch_idx: bool = True
    paged: bool = True
    contiguous_cache: bool = True
    page_sizes: tuple | range | None = None
    rotary: bool = True
    rotary_pairings: tuple = ROTARY_PAIRINGS
    rotary_queries: str = "per-token"
    bitwise_hints: tuple = ()
    deviations: tuple = ()  # the module contract's known deviations; none are declared for kernels yet

    def __post_init__(self):
        for name, value in _checked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> "KernelCapabilities":
        return dataclasses.replace(self, **changes)

    def allows_head_dim(self, d: int) -> bool:
        return self.head_dims is None or d in self.head_dims

    def allows_page_size(self, size: int) -> bool:
        return self.page_sizes is None or size in self.page_sizes

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


def _sizes(example: str):
    """A claim of positive sizes: None (any), a tuple of them, or a non-empty ``range`` (its step a multiple)."""
    def check(name, value):
        if value is None:
            return None
        if isinstance(value, range):
            if len(value) == 0 or value.start < 1 or value.step < 1:
                raise DeclarationError(f"{name}={value!r}, but should be a non-empty range of positive sizes, "
                                       f"e.g. {example}")
            return value
        return tuple(sorted(_each(_positive_int)(name, value)))
    return check


_head_dims = _sizes("range(8, 257, 8)")


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
    "entry": _choice(ENTRIES), "seqused_k": _bool, "num_splits": _bool, "zero_length_segments": _bool,
    "rows_past_cu_seqlens": _choice(TAIL_ROWS), "unused_gradients": _choice(UNUSED_GRADIENTS), "new_kv": _bool,
    "cache_batch_idx": _bool, "paged": _bool, "contiguous_cache": _bool, "page_sizes": _sizes("range(16, 1025, 16)"),
    "rotary": _bool, "rotary_pairings": _each(_choice(ROTARY_PAIRINGS)), "rotary_queries": _choice(ROTARY_QUERIES),
    "bitwise_hints": lambda name, value: () if value in ((), []) else _each(_choice(HINTS))(name, value),
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


def entry_of(names) -> str:
    """The entry point a function with these parameter names is: ``cu_seqlens_q`` makes it varlen, ``k_cache``
    the cache step; neither, dense."""
    return "varlen" if "cu_seqlens_q" in names else "kvcache" if "k_cache" in names else "dense"


def signature_claims(fn, where: str) -> dict:
    """The entry point and options ``fn``'s signature claims, ``{"entry": ..., claim: bool}``; SignatureError if
    it is none of the canonical signatures (:data:`SIGNATURES`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"{where}: cannot read its signature ({exc}); expected {SIGNATURE}") from None
    params = list(sig.parameters.values())
    names = {p.name for p in params}
    entry = entry_of(names)
    expected = SIGNATURES[entry]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 3 and not variadic:
        raise SignatureError(f"{where}: takes {len(positional)} positional argument(s) "
                               f"({', '.join(p.name for p in positional) or 'none'}), but a kernel takes q, k, v; "
                               f"expected {expected}")
    anything = any(p.kind == p.VAR_KEYWORD for p in params)  # **kwargs: every option
    missing = [n for n in PASSED[entry][3:] if n not in names and not anything]
    if missing:  # the suite passes them by keyword
        raise SignatureError(f"{where}: has no parameter {missing[0]!r}; expected {expected}")
    canonical = set(PASSED[entry]) | {k for keywords in ENTRY_CLAIMS[entry].values() for k in keywords}
    canonical |= {"rotary_interleaved"} if entry == "kvcache" else set()
    required = [p.name for p in params[3:] if p.default is p.empty and p.name not in canonical
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise SignatureError(f"{where}: requires {required[0]!r}, which is not an argument of {expected}")
    # a positional parameter that is no canonical one (softmax's dim) means another signature; extra
    # keyword-only ones with defaults are never passed, and harmless
    other = [p.name for p in positional[3:] if p.name not in canonical]
    if other and entry == "dense":
        raise SignatureError(f"{where}: its parameter {other[0]!r} is not an option of {expected}; a function "
                             "with another signature needs a kernel adapter (attnspec.kernel.adapters)")
    found = {claim: all(anything or k in names for k in keywords) for claim, keywords in ENTRY_CLAIMS[entry].items()}
    halves = [keywords for claim, keywords in ENTRY_CLAIMS[entry].items() if len(keywords) > 1 and not found[claim]
              and any(k in names for k in keywords)]
    if halves:
        given = [k for k in halves[0] if k in names]
        raise SignatureError(f"{where}: has {given[0]!r} but not {[k for k in halves[0] if k not in names][0]!r}: "
                             f"they come together; expected {expected}")
    if entry == "kvcache" and found["rotary"] and not (anything or "rotary_interleaved" in names):
        found["rotary_pairings"] = ("interleaved",)  # the keyword's default, flash-attn's: the only one it can take
    return {"entry": entry, **found}


def capabilities_of(fn, where: str) -> KernelCapabilities:
    """What ``fn`` claims: its signature's entry point and options, narrowed by its ``attnspec_kernel`` declaration."""
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
    entry = options["entry"]
    if declared.get("entry", entry) != entry:
        raise DeclarationError(f"{where}: declares entry={declared['entry']!r}, but its signature is the {entry} one "
                               f"({SIGNATURES[entry]})")
    keywords = ENTRY_CLAIMS[entry]
    widened = [c for c in keywords if not options[c] and declared.get(c) is True]
    if widened:
        raise DeclarationError(f"{where}: declares {widened[0]}=True, but its signature has no "
                               f"{' and '.join(repr(k) for k in keywords[widened[0]])} keyword (a declaration narrows, "
                               "never widens)")
    lse_only = [c for c in ("lse_base", "lse_layout") if c in declared and not options["lse"]]
    if lse_only:
        raise DeclarationError(f"{where}: declares {lse_only[0]}={declared[lse_only[0]]!r}, but has no 'return_lse' "
                               "keyword")
    pairings = options.get("rotary_pairings")
    if pairings and not set(declared.get("rotary_pairings", pairings)) <= set(pairings):
        raise DeclarationError(f"{where}: declares rotary_pairings={declared['rotary_pairings']!r}, but has no "
                               "'rotary_interleaved' keyword: it rotates interleaved pairs only")
    own = {c: v for c, v in options.items() if c in keywords or c in ("entry", "rotary_pairings")}
    if entry == "kvcache":
        own["backward"] = False  # the cache step has no gradients (it writes the cache in place)
    return KernelCapabilities(**{**own, **declared})
