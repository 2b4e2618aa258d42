"""A varlen attention written from docs/kernels_varlen.md: every segment padded into one batch, one masked softmax."""
import torch


def _check(q, k, v, cu_q, cu_k, seqused_k, alibi_slopes):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k, v must be (T, H, D)")
    if k.shape[0] != v.shape[0] or k.shape[1] != v.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError("k and v must agree in rows and heads, q and k in width")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError("Hq must be a multiple of Hkv")
    if cu_q.dim() != 1 or cu_k.dim() != 1 or cu_q.shape[0] != cu_k.shape[0] or cu_q.shape[0] < 2:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must both be (B + 1,)")
    for name, cu, rows in (("cu_seqlens_q", cu_q, q.shape[0]), ("cu_seqlens_k", cu_k, k.shape[0])):
        c = cu.tolist()
        if c[0] != 0 or any(b < a for a, b in zip(c, c[1:])) or c[-1] > rows:
            raise ValueError(f"bad {name}: {c}")
    B = cu_q.shape[0] - 1
    lens_k = (cu_k[1:] - cu_k[:-1]).tolist()
    if seqused_k is not None:
        used = seqused_k.tolist()
        if len(used) != B or any(u < 0 or u > n for u, n in zip(used, lens_k)):
            raise ValueError("seqused_k must be (B,) and within each segment")
        lens_k = used
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in ((q.shape[1],), (B, q.shape[1])):
        raise ValueError("alibi_slopes must be (Hq,) or (B, Hq)")
    return B, (cu_q[1:] - cu_q[:-1]).tolist(), lens_k


def attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k=None, causal=False,
                softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0,
                return_lse=False):
    B, lq, lk = _check(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, alibi_slopes)
    Hq, Hkv, D, Dv = q.shape[1], k.shape[1], q.shape[2], v.shape[2]
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    Lq, Lk = max(lq), max(lk)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    # copy each segment's own rows into a zero-padded batch: nothing past them is ever read
    qp = q.new_zeros(B, Lq, Hq, D, dtype=work)
    kp = k.new_zeros(B, Lk, Hkv, D, dtype=work)
    vp = v.new_zeros(B, Lk, Hkv, Dv, dtype=work)
    for b in range(B):
        qp[b, :lq[b]] = q[cq[b]:cq[b] + lq[b]].to(work)
        kp[b, :lk[b]] = k[ck[b]:ck[b] + lk[b]].to(work)
        vp[b, :lk[b]] = v[ck[b]:ck[b] + lk[b]].to(work)
    G = Hq // Hkv
    kp, vp = kp.repeat_interleave(G, dim=2), vp.repeat_interleave(G, dim=2)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bihd,bjhd->bhij", qp, kp) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(Lq, device=q.device)
    j = torch.arange(Lk, device=q.device)
    nq = torch.tensor(lq, device=q.device)
    nk = torch.tensor(lk, device=q.device)
    pos = i[None, :, None] + (nk - nq)[:, None, None]  # (B, Lq, 1): key position of each query in its segment
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(work).expand(B, Hq)
        s = s - slopes[:, :, None, None] * (pos[:, None] - j[None, None, None, :]).abs().to(work)
    left, right = window_size
    right = 0 if causal else right
    hidden = j[None, None, :] >= nk[:, None, None]  # (B, 1, Lk) padding
    hidden = hidden | (i[None, :, None] >= nq[:, None, None])
    if left >= 0:
        hidden = hidden | (j[None, None, :] < pos - left)
    if right >= 0:
        hidden = hidden | (j[None, None, :] > pos + right)
    s = s.masked_fill(hidden[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, Hq, Lq), -inf where nothing is visible
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    out = torch.einsum("bhij,bjhd->bihd", p, vp)  # (B, Lq, Hq, Dv)
    rows, lses = [], []
    for b in range(B):
        rows.append(out[b, :lq[b]])
        lses.append(lse[b, :, :lq[b]])
    tail = q.shape[0] - cq[-1]
    out = torch.cat(rows + [out.new_zeros(tail, Hq, Dv)]).to(q.dtype)
    lse = torch.cat(lses + [lse.new_full((Hq, tail), float("-inf"))], dim=1).float()
    return (out, lse) if return_lse else out
