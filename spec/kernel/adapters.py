"""Kernel adapters: how the suite calls a kernel in the canonical form, whatever its own signature.

Every kernel is reached through :meth:`KernelAdapter.attend`, which takes the canonical call::

    attend(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
           alibi_slopes=None, return_lse=False)

with q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), and returns the output (B, Lq, Hq, Dv) in q's
dtype, or ``(out, lse)`` with ``return_lse=True`` (the LSE in the declared base and layout). Only the options
the kernel claims are passed, and only when they differ from their defaults.

* :class:`CanonicalKernel` wraps a function with that signature: nothing to translate.
* :class:`SDPAStyle` translates to ``F.scaled_dot_product_attention``'s (B, H, L, D) call with ``is_causal``,
  ``scale`` and ``enable_gqa`` (its causal diagonal is top-left: declared so).
* :class:`FlexStyle` translates to FlexAttention's ``score_mod`` and ``block_mask``.
* :class:`XformersStyle` translates to xformers' ``memory_efficient_attention(query, key, value, attn_bias=,
  scale=)``: (B, L, H, D) tensors, the mask and ALiBi as one dense additive ``attn_bias``.

The translation itself is certified with the kernel: layouts and strides by ``strided_inputs_equal_contiguous``,
each option mapped by ``options_take_effect``.
"""
from __future__ import annotations

import importlib

import torch

from .. import masks
from .declaration import DeclarationError, KernelCapabilities, capabilities_of


def check_canonical(q, k, v, *, window_size=(-1, -1), alibi_slopes=None, dtypes=None, head_dims=None) -> None:
    """Raise ValueError unless q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) fit the canonical contract."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} should be a 4-D tensor (B, L, H, D), got {getattr(t, 'shape', type(t))}")
    (B, _, Hq, D), (Bk, Lk, Hkv, Dk), (Bv, Lv, Hv, _) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv):
        raise ValueError(f"batch sizes differ: q has {B}, k {Bk}, v {Bv}")
    if Lk != Lv or Hkv != Hv:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in length or heads")
    if D != Dk:
        raise ValueError(f"q has width {D} but k has {Dk}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"Hq={Hq} query heads is not a multiple of Hkv={Hkv} kv heads")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}: should be on one device")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}: should share one")
    if dtypes is not None and q.dtype not in dtypes:
        raise ValueError(f"dtype {q.dtype} is not supported (only {', '.join(map(str, dtypes))})")
    if head_dims is not None and (D not in head_dims or v.shape[-1] not in head_dims):
        raise ValueError(f"head widths D={D}, Dv={v.shape[-1]}: only {head_dims} are supported")
    if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2
            and all(isinstance(w, int) and w >= -1 for w in window_size)):
        raise ValueError(f"window_size={window_size!r}, but should be (left, right), each an int >= -1")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in ((Hq,), (B, Hq)):
        raise ValueError(f"alibi_slopes has shape {tuple(alibi_slopes.shape)}, but should be ({Hq},) or ({B}, {Hq})")


def abstract(method):
    """Mark a base class's method that an adapter must implement (:func:`validate_kernel_adapter` looks)."""
    method.abstract = True
    return method


class KernelAdapter:
    """Base class: set ``name`` and ``capabilities``; implement :meth:`attend` (see the module docstring)."""

    name: str = "unnamed kernel"
    capabilities: KernelCapabilities = KernelCapabilities()

    @abstract
    def attend(self, q, k, v, **options):
        raise NotImplementedError

    def unavailable(self, device: str) -> str | None:
        """Why the kernel cannot run on ``device`` here (a package or GPU it needs is absent), or None."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class CanonicalKernel(KernelAdapter):
    """A function with the canonical signature, certified as it is; its claims come from its signature and its
    declaration (:func:`attnspec.kernel.declaration.capabilities_of`)."""

    def __init__(self, fn, *, name: str | None = None, capabilities: KernelCapabilities | None = None):
        if not callable(fn):
            raise DeclarationError(f"CanonicalKernel(fn={fn!r}): fn should be a function")
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.capabilities = capabilities or capabilities_of(fn, self.name)

    def attend(self, q, k, v, **options):
        return self.fn(q, k, v, **options)


# entry point -> the method its adapter implements, and the call it takes
ENTRY_METHODS = {"dense": ("attend", "attend(q, k, v, **options)"),
                 "varlen": ("attend_varlen", "attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, "
                                             "max_seqlen_k, **options)"),
                 "kvcache": ("attend_cache", "attend_cache(q, k_cache, v_cache, *, cache_seqlens, **options)")}


def validate_kernel_adapter(obj, where: str) -> None:
    """Raise :class:`DeclarationError` naming ``where`` if ``obj`` is not a usable kernel adapter."""
    caps = getattr(obj, "capabilities", None)
    if not isinstance(caps, KernelCapabilities):
        raise DeclarationError(f"{where}: kernel adapter {obj!r} has capabilities={caps!r}, "
                               "but should be an attnspec.KernelCapabilities")
    method, call = ENTRY_METHODS[caps.entry]
    if not callable(getattr(obj, method, None)) or getattr(getattr(type(obj), method, None), "abstract", False):
        raise DeclarationError(f"{where}: kernel adapter {obj!r} (entry={caps.entry!r}) does not implement {call}")
    if not isinstance(getattr(obj, "name", None), str):
        raise DeclarationError(f"{where}: kernel adapter {obj!r} has no string name")


def _resolve(fn):
    """A callable, or ``"pkg.module:attr"`` imported now (so that an adapter pickles by that name)."""
    if not isinstance(fn, str):
        return fn
    module, _, attr = fn.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class SDPAStyle(KernelAdapter):
    """A kernel with ``F.scaled_dot_product_attention``'s signature, on (B, H, L, D) tensors.

    ``fn``: the function, or its ``"pkg.module:name"`` (default: torch's own); ``backend``: a
    ``torch.nn.attention.SDPBackend`` name to force (``"MATH"``, ``"FLASH_ATTENTION"``, ``"EFFICIENT_ATTENTION"``,
    ``"CUDNN_ATTENTION"``), or None. Claims the causal flag (top-left), the scale and grouped heads
    (``enable_gqa``); no window, soft-cap, ALiBi or LSE.
    """

    def __init__(self, name: str, *, fn="torch.nn.functional:scaled_dot_product_attention", backend: str | None = None,
                 devices=("cpu",), dtypes=(torch.float64, torch.float32, torch.bfloat16), backward: bool = True):
        self.name, self.fn, self.backend = name, fn, backend
        self.capabilities = KernelCapabilities(devices=devices, dtypes=dtypes, causal_alignment="top-left",
                                               window=False, softcap=False, alibi=False, lse=False, backward=backward)

    def unavailable(self, device: str) -> str | None:
        if self.backend is None:
            return None
        from torch.nn.attention import SDPBackend
        if not hasattr(SDPBackend, self.backend):
            return f"this torch has no SDPA backend {self.backend}"
        return None

    def attend(self, q, k, v, *, causal=False, softmax_scale=None):
        check_canonical(q, k, v)  # SDPA would broadcast a batch of one against more: not the canonical call
        fn = _resolve(self.fn)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D): SDPA's layout
        call = lambda: fn(qh, kh, vh, is_causal=causal, scale=softmax_scale,  # noqa: E731
                          enable_gqa=q.shape[2] != k.shape[2])
        if self.backend is None:
            out = call()
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(getattr(SDPBackend, self.backend)):
                out = call()
        return out.transpose(1, 2)  # (B, Lq, Hq, Dv)


class FlexStyle(KernelAdapter):
    """FlexAttention (``torch.nn.attention.flex_attention``, eager), or a function with its signature:
    ``fn(query, key, value, score_mod=, block_mask=, scale=, enable_gqa=, return_aux=)`` on (B, H, L, D).

    The options become a ``score_mod`` (soft-cap, then ALiBi) and a ``block_mask`` (the causal flag and the
    window, bottom-right); the LSE comes back natural-log, (B, Hq, Lq). Eager FlexAttention has no backward on
    the CPU: declared not claimed there.
    """

    def __init__(self, name: str, *, fn="torch.nn.attention.flex_attention:flex_attention",
                 devices=("cpu",), dtypes=(torch.float64, torch.float32, torch.bfloat16), backward: bool = False):
        self.name, self.fn = name, fn
        self.capabilities = KernelCapabilities(devices=devices, dtypes=dtypes, backward=backward)

    def attend(self, q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
               alibi_slopes=None, return_lse=False):
        from torch.nn.attention.flex_attention import AuxRequest, create_block_mask
        check_canonical(q, k, v, window_size=window_size, alibi_slopes=alibi_slopes)
        B, Lq, Hq, _ = q.shape
        Lk = k.shape[1]
        offset = Lk - Lq  # bottom-right: query i sits at key position i + Lk - Lq
        left, right = window_size
        right = 0 if causal else right

        def visible(b, h, i, j):
            keep = (j >= 0) & (j < Lk)  # broadcast to the shape FlexAttention asks for
            if left >= 0:
                keep = keep & (j >= i + offset - left)
            if right >= 0:
                keep = keep & (j <= i + offset + right)
            return keep

        work = torch.promote_types(q.dtype, torch.float32)  # the slopes times a distance, rounded no more than the scores
        slopes = None if alibi_slopes is None else alibi_slopes.to(q.device, work).expand(B, Hq)  # (B, Hq)

        def score_mod(score, b, h, i, j):
            if softcap:
                score = softcap * torch.tanh(score / softcap)
            if slopes is not None:
                score = score - slopes[b, h] * (i + offset - j).abs()
            return score

        masked = causal or left >= 0 or right >= 0
        block_mask = create_block_mask(visible, None, None, Lq, Lk, device=q.device) if masked else None
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        out, aux = _resolve(self.fn)(qh, kh, vh, score_mod=score_mod if softcap or slopes is not None else None,
                                     block_mask=block_mask, scale=softmax_scale, enable_gqa=Hq != k.shape[2],
                                     return_aux=AuxRequest(lse=True))
        out = out.transpose(1, 2)  # (B, Lq, Hq, Dv)
        return (out, aux.lse) if return_lse else out


class XformersStyle(KernelAdapter):
    """A kernel with xformers' ``memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None)``
    signature on (B, L, H, D) tensors (the canonical layout). The causal flag, the window and ALiBi become one
    dense additive ``attn_bias`` (B, Hq, Lq, Lk) of the query's dtype, -inf where hidden; grouped heads are
    expanded to Hq before the call (xformers takes them in a 5-D layout instead)."""

    def __init__(self, name: str, *, fn="xformers.ops:memory_efficient_attention", devices=("cuda",),
                 dtypes=(torch.float32, torch.bfloat16, torch.float16), backward: bool = True):
        self.name, self.fn = name, fn
        self.capabilities = KernelCapabilities(devices=devices, dtypes=dtypes, softcap=False, lse=False,
                                               backward=backward)

    def unavailable(self, device: str) -> str | None:
        module = self.fn.partition(":")[0] if isinstance(self.fn, str) else None
        if module and importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module.split('.')[0]} is not installed"
        return None

    def attend(self, q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), alibi_slopes=None):
        from .. import reference
        from .problem import KernelProblem
        check_canonical(q, k, v, window_size=window_size, alibi_slopes=alibi_slopes)
        B, Lq, Hq, D = q.shape
        Lk, Hkv = k.shape[1], k.shape[2]
        geometry = KernelProblem(Lq=Lq, Lk=Lk, causal=causal, window=tuple(window_size))
        bias = masks.additive(geometry.hidden(q.device), q.dtype).repeat(B, Hq, 1, 1)  # (B, Hq, Lq, Lk): -inf hidden
        if alibi_slopes is not None:
            work = torch.promote_types(q.dtype, torch.float32)  # no rounding beyond the bias's own dtype
            bias = bias + reference.alibi_bias(alibi_slopes.to(q.device, work), Lq, Lk).to(q.dtype)
        k = k.repeat_interleave(Hq // Hkv, dim=2)  # (B, Lk, Hq, D): query head h reads kv head h // G
        v = v.repeat_interleave(Hq // Hkv, dim=2)  # (B, Lk, Hq, Dv)
        return _resolve(self.fn)(q, k, v, attn_bias=bias, scale=softmax_scale)
