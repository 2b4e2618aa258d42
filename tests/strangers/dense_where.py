"""A plain dense kernel: every score at once, masks with torch.where, float32 for low precision."""
import torch


def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
         return_lse=False):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be 4-D")
    B, Lq, Hq, D = q.shape
    _, Lk, Hkv, _ = k.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[3] != D or v.shape[1] != Lk or v.shape[2] != Hkv:
        raise ValueError(f"shape mismatch q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}")
    if Hq % Hkv != 0:
        raise ValueError("Hq must be a multiple of Hkv")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in [(Hq,), (B, Hq)]:
        raise ValueError("bad alibi_slopes shape")
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    kf = kf.repeat_interleave(Hq // Hkv, dim=2)
    vf = vf.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(Lq, device=q.device).view(-1, 1) + (Lk - Lq)
    j = torch.arange(Lk, device=q.device).view(1, -1)
    if alibi_slopes is not None:
        sl = alibi_slopes.to(ct)
        sl = sl.view(1, Hq, 1, 1) if sl.ndim == 1 else sl.view(B, Hq, 1, 1)
        s = s - sl * (i - j).abs().to(ct)
    left, right = window_size
    if causal:
        right = 0
    ok = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    s = torch.where(ok, s, torch.tensor(float("-inf"), dtype=ct, device=q.device))
    lse = torch.logsumexp(s, dim=-1)  # -inf for rows with nothing visible
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    p = torch.where(ok, p, torch.zeros_like(p))
    out = torch.einsum("bhij,bjhd->bihd", p, vf).to(q.dtype)
    if return_lse:
        return out, lse.float()
    return out
