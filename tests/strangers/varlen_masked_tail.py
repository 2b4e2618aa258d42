"""Buggy twin: seqused_k implemented as a mask over the whole segment, so the keys past it are still read."""
import torch

from varlen_padded import attn_varlen as _correct


def attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k=None, causal=False,
                softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0,
                return_lse=False):
    if seqused_k is None:
        return _correct(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                        softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                        alibi_slopes=alibi_slopes, return_lse=return_lse)
    # zero the weights of keys past seqused_k instead of cutting them off
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(cq) - 1):
        n, u = ck[b + 1] - ck[b], int(seqused_k[b])
        qb, kb, vb = q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]]
        G = q.shape[1] // k.shape[1]
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        s = torch.einsum("ihd,jhd->hij", qb.to(work), kb.to(work).repeat_interleave(G, 1))
        s = s * (q.shape[2] ** -0.5 if softmax_scale is None else softmax_scale)
        pos = torch.arange(qb.shape[0])[:, None] + u - qb.shape[0]
        j = torch.arange(n)[None, :]
        hide = (j >= u) | ((j > pos) if causal else torch.zeros_like(j > pos))
        s = s.masked_fill(hide, float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
        outs.append(torch.einsum("hij,jhd->ihd", p, vb.to(work).repeat_interleave(G, 1)).to(q.dtype))
        lses.append(lse.float())
    tail = q.shape[0] - cq[-1]
    out = torch.cat(outs + [q.new_zeros(tail, q.shape[1], v.shape[2])])
    lse = torch.cat(lses + [torch.full((q.shape[1], tail), float("-inf"))], 1)
    return (out, lse) if return_lse else out
