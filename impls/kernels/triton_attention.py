"""A Triton attention kernel of ours: FlashAttention-2's forward (online softmax over 16 x 16 tiles, bottom-right
causal, grouped heads, the LSE), certified with the ``triton`` extra (``pip install "attnspec[triton]"``).

Where there is no GPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``: set it in the environment, or
let this module set it, if nothing imported Triton before), on CPU tensors, in float32 and float16. bfloat16 is declared not claimed, and refused: the
interpreter stores it as 16-bit integers and ``tl.dot`` multiplies the bit patterns, silently (triton #11584).
Triton is imported on the first call, never at import time: this module loads without it.
"""
from __future__ import annotations

import os

import torch

from attnspec.kernel.adapters import check_canonical

BLOCK = 16  # tl.dot needs every side at least 16
MAX_HEAD_DIM = 128
_FORWARD = None


def _forward_kernel():
    """The ``@triton.jit`` forward, made on first use (importing Triton then, under the interpreter without a GPU)."""
    global _FORWARD
    if _FORWARD is not None:
        return _FORWARD
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton
    import triton.language as tl
    if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
        raise RuntimeError("no GPU, and Triton was imported before TRITON_INTERPRET=1 was set (torch.compile imports "
                           "it): run with TRITON_INTERPRET=1 in the environment")

    @triton.jit
    def forward(Q, K, V, O, LSE, s_qb, s_ql, s_qh, s_qd, s_kb, s_kl, s_kh, s_kd, s_vb, s_vl, s_vh, s_vd,
                s_ob, s_ol, s_oh, Hq, G, Lq, Lk, D, scale, offset,
                CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_m, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // Hq, bh % Hq
        kvh = h // G  # query head h reads kv head h // G
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_ql + dims[None, :] * s_qd,
                    mask=(rows[:, None] < Lq) & (dims[None, :] < D), other=0.0)  # (BLOCK_M, BLOCK_D)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, Lk, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k = tl.load(K + b * s_kb + kvh * s_kh + cols[None, :] * s_kl + dims[:, None] * s_kd,
                        mask=(cols[None, :] < Lk) & (dims[:, None] < D), other=0.0)  # (BLOCK_D, BLOCK_N)
            s = tl.dot(q, k) * scale  # (BLOCK_M, BLOCK_N), float32 accumulation
            visible = (cols[None, :] < Lk) & (rows[:, None] >= 0)
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None] + offset)  # bottom-right: offset = Lk - Lq
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: no shift
            p = tl.exp(s - shift[:, None])
            rescale = tl.exp(m_i - shift)
            v = tl.load(V + b * s_vb + kvh * s_vh + cols[:, None] * s_vl + dims[None, :] * s_vd,
                        mask=(cols[:, None] < Lk) & (dims[None, :] < D), other=0.0)  # (BLOCK_N, BLOCK_D)
            l_i = l_i * rescale + tl.sum(p, 1)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        seen = l_i > 0
        out = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
        lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(O + b * s_ob + h * s_oh + rows[:, None] * s_ol + dims[None, :], out.to(O.dtype.element_ty),
                 mask=(rows[:, None] < Lq) & (dims[None, :] < D))
        tl.store(LSE + bh * Lq + rows, lse, mask=rows < Lq)

    _FORWARD = forward
    return forward


def attn(q, k, v, *, causal=False, softmax_scale=None, return_lse=False):
    """Attention of q (B, Lq, Hq, D) over k, v (B, Lk, Hkv, D) in float32 or float16; see the module docstring."""
    check_canonical(q, k, v)
    if q.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype {q.dtype}: this Triton kernel takes float32 and float16 (bfloat16 is wrong under "
                         "the interpreter)")
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"v has width {v.shape[-1]} but q has {q.shape[-1]}: this kernel needs Dv == D")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head width {q.shape[-1]}: this kernel takes at most {MAX_HEAD_DIM}")
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    out = torch.zeros(B, Lq, Hq, D, dtype=q.dtype, device=q.device)  # (B, Lq, Hq, D)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float32, device=q.device)  # (B, Hq, Lq)
    if Lq and Lk:  # no keys: every query sees none (0, -inf); no queries: nothing to do
        scale = D ** -0.5 if softmax_scale is None else float(softmax_scale)
        block_d = max(BLOCK, 1 << (D - 1).bit_length())
        grid = ((Lq + BLOCK - 1) // BLOCK, B * Hq)
        _forward_kernel()[grid](q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
                                Hq, Hq // Hkv, Lq, Lk, D, scale, Lk - Lq, CAUSAL=bool(causal), BLOCK_M=BLOCK,
                                BLOCK_N=BLOCK, BLOCK_D=block_d)
    return (out, lse) if return_lse else out


attn.attnspec_kernel = {"dtypes": ("float32", "float16"), "devices": ("cpu", "cuda"), "backward": False,
                        "distinct_value_dim": False, "head_dims": range(1, MAX_HEAD_DIM + 1)}
