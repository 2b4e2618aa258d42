"""torch's own attention kernels, certified as kernels: ``F.scaled_dot_product_attention`` through the SDPA-style
adapter (its math backend on the CPU; flash, efficient and cuDNN on a GPU), and the CPU flash kernel called
directly, for its LSE."""
from __future__ import annotations

import torch

from attnspec import Deviation
from attnspec.kernel import KernelAdapter, KernelCapabilities, SDPAStyle
from attnspec.kernel.adapters import check_canonical

CPU_DTYPES = (torch.float64, torch.float32, torch.bfloat16)
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

MATH = SDPAStyle("sdpa-math (kernel)", backend="MATH")
# On a GPU: each backend forced in turn (an absent one is skipped, saying why).
FLASH_CUDA = SDPAStyle("sdpa-flash (kernel)", backend="FLASH_ATTENTION", devices=("cuda",),
                       dtypes=(torch.bfloat16, torch.float16))
EFFICIENT_CUDA = SDPAStyle("sdpa-efficient (kernel)", backend="EFFICIENT_ATTENTION", devices=("cuda",), dtypes=GPU_DTYPES)
CUDNN = SDPAStyle("sdpa-cudnn (kernel)", backend="CUDNN_ATTENTION", devices=("cuda",),
                  dtypes=(torch.bfloat16, torch.float16))


class CPUFlash(KernelAdapter):
    """``aten._scaled_dot_product_flash_attention_for_cpu``: torch's tiled CPU kernel, which returns its LSE
    ((B, H, L), natural log). Top-left causal; the kv heads are repeated for grouped queries (it takes equal
    head counts)."""

    name = "sdpa-flash-cpu (kernel)"
    capabilities = KernelCapabilities(
        causal_alignment="top-left", window=False, softcap=False, alibi=False, distinct_value_dim=False,
        deviations=(Deviation("kernel_empty_sequences", match="raised ValueError: empty sequences",
                              reason="torch 2.13's CPU flash kernel dies of SIGFPE (a division by zero) when Lq or "
                                     "Lk is 0; this adapter refuses them instead"),
                    Deviation("strided_inputs_equal_contiguous", match="a last dimension of stride 2",
                              reason="torch 2.13's CPU flash kernel reads a last dimension of stride 2 as if it were "
                                     "contiguous: zeros or NaN (pytorch PR #187506)")))

    def attend(self, q, k, v, *, causal=False, softmax_scale=None, return_lse=False):
        check_canonical(q, k, v)
        if q.shape[1] == 0 or k.shape[1] == 0:
            raise ValueError(f"empty sequences (Lq={q.shape[1]}, Lk={k.shape[1]}): torch's CPU flash kernel divides "
                             "by zero on them")
        G = q.shape[2] // k.shape[2]
        qh = q.transpose(1, 2)  # (B, Hq, Lq, D)
        kh = k.transpose(1, 2).repeat_interleave(G, dim=1)  # (B, Hq, Lk, D)
        vh = v.transpose(1, 2).repeat_interleave(G, dim=1)  # (B, Hq, Lk, Dv)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, causal,
                                                                             scale=softmax_scale)
        out = out.transpose(1, 2)  # (B, Lq, Hq, Dv)
        return (out, lse) if return_lse else out


FLASH_CPU = CPUFlash()
