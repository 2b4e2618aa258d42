"""attnspec's own kernels, certified in the default run like any other (``attnspec.impls`` entry point ``kernels``).

* ``reference``: the float64 reference as a kernel;
* ``tiled``: a FlashAttention-2-style tiled kernel in pure torch, with a hand-written backward;
* ``sdpa``: torch's ``scaled_dot_product_attention`` (math backend) and its CPU flash kernel (with LSE);
  on a GPU, its flash, efficient and cuDNN backends;
* ``flex``: FlexAttention in eager mode (forward and LSE; a soft-cap and ALiBi ``score_mod``);
* ``flash_attn``: flash-attn 2's own ``flash_attn_func`` (GPU; skipped where absent);
* ``xformers_like``: the xformers-style adapter (a dense ``attn_bias``) around a CPU stand-in with xformers'
  signature, and around xformers itself (GPU; skipped where absent);
* ``triton_attention``: a Triton kernel of ours (the ``triton`` extra; the CPU interpreter where there is no GPU).
* ``paged``: varlen attention and the cache step (contiguous or paged, with rotary and split-KV) on the tiled
  kernel; ``flashinfer_like``: FlashInfer's CSR page layout, a CPU stand-in behind the FlashInfer-style adapter;
  ``flash_attn``'s ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache``, and ``torch_varlen``'s
  ``varlen_attn``: GPU kernels, skipped with the reason where absent (docs/kernels_varlen.md).
"""
from __future__ import annotations

from attnspec.kernel import CanonicalKernel
from attnspec.kernel.entries import CanonicalCacheStep, CanonicalVarlen

from . import flash_attn, flashinfer_like, paged, reference, sdpa, tiled, torch_varlen, xformers_like

REFERENCE = CanonicalKernel(reference.attn, name="reference (kernel)")
TILED = CanonicalKernel(tiled.attn, name="tiled (kernel)")
PAGED_VARLEN = CanonicalVarlen(paged.attn_varlen, name="paged varlen (kernel)")
PAGED_CACHE = CanonicalCacheStep(paged.attn_with_kvcache, name="paged cache step (kernel)")

# (adapter, where it lives): the origin lets a child process, and a repro snippet, load it again
_PLACES = [(REFERENCE, "attnspec.impls.kernels.reference:attn"), (TILED, "attnspec.impls.kernels.tiled:attn"),
           (sdpa.MATH, "attnspec.impls.kernels.sdpa:MATH"), (sdpa.FLASH_CPU, "attnspec.impls.kernels.sdpa:FLASH_CPU"),
           (sdpa.FLASH_CUDA, "attnspec.impls.kernels.sdpa:FLASH_CUDA"),
           (sdpa.EFFICIENT_CUDA, "attnspec.impls.kernels.sdpa:EFFICIENT_CUDA"),
           (sdpa.CUDNN, "attnspec.impls.kernels.sdpa:CUDNN"),
           (flash_attn.FLASH_ATTN_FUNC, "attnspec.impls.kernels.flash_attn:FLASH_ATTN_FUNC"),
           (xformers_like.XFORMERS_STYLE_CPU, "attnspec.impls.kernels.xformers_like:XFORMERS_STYLE_CPU"),
           (xformers_like.XFORMERS, "attnspec.impls.kernels.xformers_like:XFORMERS"),
           (PAGED_VARLEN, "attnspec.impls.kernels.paged:attn_varlen"),
           (PAGED_CACHE, "attnspec.impls.kernels.paged:attn_with_kvcache"),
           (flashinfer_like.FLASHINFER_STYLE, "attnspec.impls.kernels.flashinfer_like:FLASHINFER_STYLE"),
           (flash_attn.FLASH_ATTN_VARLEN, "attnspec.impls.kernels.flash_attn:FLASH_ATTN_VARLEN"),
           (flash_attn.FLASH_ATTN_KVCACHE, "attnspec.impls.kernels.flash_attn:FLASH_ATTN_KVCACHE"),
           (torch_varlen.TORCH_VARLEN, "attnspec.impls.kernels.torch_varlen:TORCH_VARLEN")]
for _adapter, _origin in _PLACES:
    _adapter.origin = _origin

BUNDLED: list = [adapter for adapter, _ in _PLACES]
