"""A kernel that hands the work to torch's SDPA with an explicit float mask; causal and window only."""
import torch
import torch.nn.functional as F


def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    B, Lq, Hq, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[-1] != D or v.shape[:3] != k.shape[:3] or Hq % k.shape[2]:
        raise ValueError("bad shapes")
    Lk = k.shape[1]
    i = torch.arange(Lq).unsqueeze(1) + (Lk - Lq)
    j = torch.arange(Lk).unsqueeze(0)
    left, right = window_size
    if causal:
        right = 0
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if left >= 0:
        allowed = allowed & (j >= i - left)
    if right >= 0:
        allowed = allowed & (j <= i + right)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    rep = Hq // k.shape[2]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    mask = torch.zeros(Lq, Lk, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=softmax_scale)
    out = torch.nan_to_num(out, nan=0.0)  # rows that see nothing
    out = torch.where(allowed.any(1).view(1, 1, Lq, 1), out, torch.zeros_like(out))
    return out.transpose(1, 2)
