"""A cache step written from docs/kernels_varlen.md: rotate, write the new rows, gather each item's rows, attend."""
import torch


def _rotate(x, cos, sin, positions, interleaved):
    # x (L, H, D), positions (L,): the first 2 * cos.shape[1] features turn pair by pair
    r = 2 * cos.shape[1]
    c = cos[positions].to(torch.float64)[:, None, :]
    s = sin[positions].to(torch.float64)[:, None, :]
    y = x.to(torch.float64).clone()
    if interleaved:
        a, b = y[..., 0:r:2].clone(), y[..., 1:r:2].clone()
        y[..., 0:r:2], y[..., 1:r:2] = a * c - b * s, a * s + b * c
    else:
        a, b = y[..., :r // 2].clone(), y[..., r // 2:r].clone()
        y[..., :r // 2], y[..., r // 2:r] = a * c - b * s, a * s + b * c
    return y.to(x.dtype)


def _where(b, rows, cache, cache_batch_idx, block_table):
    """(index into dim 0, index into dim 1) of item b's rows."""
    if block_table is None:
        c = b if cache_batch_idx is None else int(cache_batch_idx[b])
        return torch.full_like(rows, c), rows
    ps = cache.shape[1]
    return block_table[b].long()[rows // ps], rows % ps


def _attend(q, k, v, causal, scale, window, softcap, slopes):
    # one item: q (Lq, Hq, D), k (n, Hkv, D), v (n, Hkv, Dv) -> (out (Lq, Hq, Dv), lse (Hq, Lq))
    Lq, Hq, D = q.shape
    n, Hkv = k.shape[0], k.shape[1]
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    G = Hq // Hkv
    kk = k.to(work).repeat_interleave(G, dim=1)
    vv = v.to(work).repeat_interleave(G, dim=1)
    s = torch.einsum("ihd,jhd->hij", q.to(work), kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    pos = torch.arange(Lq, device=q.device)[:, None] + n - Lq
    j = torch.arange(n, device=q.device)[None, :]
    if slopes is not None:
        s = s - slopes.to(work)[:, None, None] * (pos - j).abs().to(work)
    left, right = window
    right = 0 if causal else right
    hide = torch.zeros(Lq, n, dtype=torch.bool, device=q.device)
    if left >= 0:
        hide |= j < pos - left
    if right >= 0:
        hide |= j > pos + right
    s = s.masked_fill(hide, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    out = torch.einsum("hij,jhd->ihd", torch.exp(s - safe[..., None]), vv)
    return out.to(q.dtype), lse.float()


def attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, cache_batch_idx=None, block_table=None,
                      rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False, softmax_scale=None,
                      window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0, return_lse=False):
    if (k is None) != (v is None):
        raise ValueError("k and v come together")
    B, Lq, Hq, D = q.shape
    if k_cache.dim() != 4 or v_cache.shape[:3] != k_cache.shape[:3] or k_cache.shape[3] != D:
        raise ValueError("k_cache, v_cache and q do not fit")
    Hkv = k_cache.shape[2]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError("Hq must be a multiple of Hkv")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError("cache_seqlens must be (B,)")
    Ln = 0 if k is None else k.shape[1]
    if k is not None and (k.shape[0] != B or k.shape[2] != Hkv or v.shape[:3] != k.shape[:3]):
        raise ValueError("k, v must be (B, Ln, Hkv, .)")
    if block_table is None:
        if cache_batch_idx is None and k_cache.shape[0] != B:
            raise ValueError("without cache_batch_idx the cache must hold B items")
        if cache_batch_idx is not None and any(c < 0 or c >= k_cache.shape[0] for c in cache_batch_idx.tolist()):
            raise ValueError("cache_batch_idx out of range")
        capacity = k_cache.shape[1]
    else:
        capacity = block_table.shape[1] * k_cache.shape[1]
    lengths = cache_seqlens.tolist()
    if any(n < 0 or n + Ln > capacity for n in lengths):
        raise ValueError("cache_seqlens + Ln past the cache")
    if block_table is not None:
        ps = k_cache.shape[1]
        for b, n in enumerate(lengths):
            used = block_table[b, :(n + Ln + ps - 1) // ps].tolist()
            if any(p < 0 or p >= k_cache.shape[0] for p in used):
                raise ValueError("block_table entry out of range")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in ((Hq,), (B, Hq)):
        raise ValueError("alibi_slopes must be (Hq,) or (B, Hq)")
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    outs, lses = [], []
    for b, n in enumerate(lengths):
        qb = q[b]
        if rotary_cos is not None:
            qb = _rotate(qb, rotary_cos, rotary_sin, torch.arange(Lq, device=q.device) + n, rotary_interleaved)
        if k is not None:
            kb = k[b]
            if rotary_cos is not None:
                kb = _rotate(kb, rotary_cos, rotary_sin, torch.arange(Ln, device=q.device) + n, rotary_interleaved)
            at = _where(b, torch.arange(n, n + Ln, device=q.device), k_cache, cache_batch_idx, block_table)
            k_cache[at] = kb.to(k_cache.dtype)
            v_cache[at] = v[b].to(v_cache.dtype)
        at = _where(b, torch.arange(n + Ln, device=q.device), k_cache, cache_batch_idx, block_table)
        slopes = None if alibi_slopes is None else (alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b])
        out, lse = _attend(qb, k_cache[at], v_cache[at], causal, scale, tuple(window_size), softcap, slopes)
        outs.append(out)
        lses.append(lse)
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse) if return_lse else out
