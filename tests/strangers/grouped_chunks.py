"""Keys in chunks of 7 with a running max and sum (exp2), grouped heads by reshaping q, no repeat of k and v."""
import math

import torch


def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
         return_lse=False):
    B, Lq, Hq, D = q.shape
    Bk, Lk, Hkv, Dk = k.shape
    if (Bk, Dk) != (B, D) or v.shape[:3] != k.shape[:3] or Hq % Hkv:
        raise ValueError("incompatible q/k/v shapes")
    if alibi_slopes is not None and alibi_slopes.shape not in (torch.Size([Hq]), torch.Size([B, Hq])):
        raise ValueError("alibi_slopes must be (Hq,) or (B, Hq)")
    G = Hq // Hkv
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = (D ** -0.5 if softmax_scale is None else softmax_scale) * math.log2(math.e)
    qg = q.to(work).view(B, Lq, Hkv, G, D)
    kw, vw = k.to(work), v.to(work)
    left, right = window_size
    right = 0 if causal else right
    pos = torch.arange(Lq, device=q.device) + Lk - Lq  # (Lq,)
    slopes = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(work).expand(B, Hq).reshape(B, Hkv, G)
    m = torch.full((B, Lq, Hkv, G), -math.inf, dtype=work, device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(B, Lq, Hkv, G, v.shape[-1], dtype=work, device=q.device)
    for j0 in range(0, Lk, 7):
        kc, vc = kw[:, j0:j0 + 7], vw[:, j0:j0 + 7]
        j = torch.arange(j0, j0 + kc.shape[1], device=q.device)
        s = torch.einsum("bqhgd,bkhd->bqhgk", qg, kc) * (scale / math.log2(math.e))  # natural units first
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        if slopes is not None:
            s = s - slopes[:, None, :, :, None] * (pos[:, None] - j[None, :]).abs().to(work)[None, :, None, None, :]
        s = s * math.log2(math.e)
        keep = torch.ones(Lq, kc.shape[1], dtype=torch.bool, device=q.device)
        if left >= 0:
            keep &= j[None, :] >= pos[:, None] - left
        if right >= 0:
            keep &= j[None, :] <= pos[:, None] + right
        s = s.masked_fill(~keep[None, :, None, None, :], -math.inf)
        m_new = torch.maximum(m, s.amax(-1))
        base = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        alpha = torch.exp2(m - base)
        p = torch.exp2(s - base[..., None])
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[..., None] + torch.einsum("bqhgk,bkhd->bqhgd", p, vc)
        m = m_new
    nonempty = l > 0
    out = torch.where(nonempty[..., None], acc / torch.where(nonempty, l, torch.ones_like(l))[..., None],
                      torch.zeros_like(acc))
    out = out.reshape(B, Lq, Hq, v.shape[-1]).to(q.dtype)
    if not return_lse:
        return out
    lse2 = torch.where(nonempty, m + torch.log2(torch.where(nonempty, l, torch.ones_like(l))),
                       torch.full_like(l, -math.inf))
    lse = (lse2 * math.log(2)).reshape(B, Lq, Hq).transpose(1, 2).float()
    return out, lse
