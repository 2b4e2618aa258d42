"""The float64 reference as a kernel, with the canonical signature: what every other kernel is held to."""
from __future__ import annotations


from attnspec.kernel.problem import KernelProblem
from attnspec.kernel.reference import attention

from attnspec.kernel.adapters import check_canonical


def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
         return_lse=False):
    """Attention of q (B, Lq, Hq, D) over k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), computed in float64.

    The keys each query sees come from the one mask algebra (:meth:`KernelProblem.hidden`), bottom-right."""
    check_canonical(q, k, v, window_size=window_size, alibi_slopes=alibi_slopes)
    B, Lq, Hq, D = q.shape
    geometry = KernelProblem(Lq=Lq, Lk=k.shape[1], causal=causal, window=tuple(window_size))
    out, lse = attention(q.double(), k.double(), v.double(), hidden=geometry.hidden(q.device),
                         scale=D ** -0.5 if softmax_scale is None else softmax_scale, softcap=softcap,
                         alibi_slopes=alibi_slopes)
    out = out.to(q.dtype)  # (B, Lq, Hq, Dv)
    return (out, lse.float()) if return_lse else out
