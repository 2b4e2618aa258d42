"""The kernels behind ``F.scaled_dot_product_attention``, each certified on its own.

``attnspec.impls.sdpa`` lets torch pick a kernel per call; here each adapter pins one with
``torch.nn.attention.sdpa_kernel``, so a kernel that torch would not pick for a
problem raises instead of quietly falling back to another. Each declares the
dtypes, masks and head widths its kernel takes (torch 2.13's ``sdp_utils``):

==================  =======  ==============================  =====  =========  ========
adapter             devices  dtypes                          masks  head_dim   dropout
==================  =======  ==============================  =====  =========  ========
sdpa.math           both     float64, float32, bf16, fp16    yes    any        yes
sdpa.flash.cpu      cpu      float64, float32, bf16          yes    any        no
sdpa.flash          cuda     bf16, fp16                      no     8k, ≤ 256  yes
sdpa.efficient      cuda     float32, bf16, fp16             yes    8k         yes
sdpa.cudnn          cuda     bf16, fp16                      no     8k, ≤ 128  no
==================  =======  ==============================  =====  =========  ========

None of them returns attention weights (``need_weights=True`` is not claimed):
``attnspec.impls.sdpa`` computes those explicitly, and is certified with them.
A kernel this GPU lacks (cuDNN attention before Ampere, say) makes its cases skip
with the reason, found by one tiny call (:meth:`KernelDropIn.unavailable`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnspec import Capabilities, Deviation, DropIn

from .sdpa import SDPAMultiheadAttention

HALF = (torch.bfloat16, torch.float16)


class KernelDropIn(DropIn):
    """A drop-in whose SDPA calls all run on one kernel (``backend``)."""

    def __init__(self, name: str, backend: SDPBackend, capabilities: Capabilities):
        cls = type(f"SDPA_{backend.name}", (SDPAMultiheadAttention,), {"backend": backend, "_sdpa": _pinned_sdpa})
        super().__init__(cls, name=name, capabilities=capabilities)
        self.backend = backend

    def unavailable(self, device: str) -> str | None:
        """Called where CUDA, if asked for, exists (:func:`attnspec.adapter.unavailable_reason`)."""
        if device not in self.capabilities.devices:
            return None  # not claimed there: reported as such
        return _probe(self.backend, device)


def _pinned_sdpa(self, q, k, v, mask, dropout_p, is_causal=False):
    """:meth:`SDPAMultiheadAttention._sdpa`, with only ``self.backend`` allowed."""
    with sdpa_kernel(self.backend):
        return SDPAMultiheadAttention._sdpa(self, q, k, v, mask, dropout_p, is_causal=is_causal)


@functools.lru_cache(maxsize=None)
def _probe(backend: SDPBackend, device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` here, from one small call in its best case, or None."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    q = torch.zeros(1, 1, 8, 64, dtype=dtype, device=device)  # (N, H, L, hd)
    try:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, q, q)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = torch.cuda.get_device_name(0) if device == "cuda" else "this CPU"
        return f"the {backend.name} kernel does not run on {name} (torch {torch.__version__}): {first}"
    return None


NO_WEIGHTS = dict(returns_weights=False, returns_per_head_weights=False, fully_masked_rows="zeros")
# Seen on an H200 with torch 2.11.0+cu130 (docs/cuda.md): each fused kernel refuses a sequence of length 0.
NO_EMPTY = Deviation("empty_sequences", match=r"call raised RuntimeError: No available kernel",
                     reason="with only this fused kernel allowed, a sequence of length 0 raises 'No available "
                            "kernel' (torch 2.11 on CUDA for flash, efficient and cuDNN, and on the CPU for "
                            "flash; torch 2.13's CPU flash kernel takes it)")

MATH = KernelDropIn("sdpa.math", SDPBackend.MATH, Capabilities(**NO_WEIGHTS))
# The CPU flash kernel takes masks but no dropout: with dropout_p > 0 and only this kernel
# allowed, torch 2.13 raises "No available kernel" (the suite found it: dropout_active_in_training).
FLASH_CPU = KernelDropIn("sdpa.flash.cpu", SDPBackend.FLASH_ATTENTION, Capabilities(
    **NO_WEIGHTS, devices=("cpu",), dtypes=(torch.float64, torch.float32, torch.bfloat16), attention_dropout=False,
    deviations=[NO_EMPTY]))
# FlashAttention-2 on CUDA: half precision only, no attention mask besides is_causal.
FLASH = KernelDropIn("sdpa.flash", SDPBackend.FLASH_ATTENTION, Capabilities(
    **NO_WEIGHTS, devices=("cuda",), dtypes=HALF, key_padding_mask_kinds=(), attn_mask_kinds=(), head_dim_multiple=8,
    deviations=[NO_EMPTY]))
# xformers' memory-efficient kernel: no float64; masks become an additive bias.
EFFICIENT = KernelDropIn("sdpa.efficient", SDPBackend.EFFICIENT_ATTENTION, Capabilities(
    **NO_WEIGHTS, devices=("cuda",), dtypes=(torch.float32, *HALF), head_dim_multiple=8,
    deviations=[NO_EMPTY]))
# cuDNN's fused attention: half precision, no masks and no dropout are declared (the
# conservative reading of torch 2.13's checks; a claim is added once a GPU run shows it holds).
CUDNN = KernelDropIn("sdpa.cudnn", SDPBackend.CUDNN_ATTENTION, Capabilities(
    **NO_WEIGHTS, devices=("cuda",), dtypes=HALF, key_padding_mask_kinds=(), attn_mask_kinds=(), attention_dropout=False,
    head_dim_multiple=8, deviations=[NO_EMPTY]))

KERNELS = [MATH, FLASH_CPU, FLASH, EFFICIENT, CUDNN]
for _adapter, _attr in zip(KERNELS, ("MATH", "FLASH_CPU", "FLASH", "EFFICIENT", "CUDNN")):
    _adapter.origin = f"{__name__}:{_attr}"
