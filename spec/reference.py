"""The float64 reference: ``nn.MultiheadAttention`` semantics (slow path), written out once.

The same functions run in any dtype; :mod:`attnspec.tolerances` calls them in the
implementation's dtype to measure what a plain computation of the same math errs by.
Names: N batch, L query length, S key length (S' = S plus appended keys),
E embed_dim, H heads, hd = E // H head width.

Policy (see README, "Fully masked rows"): a query row whose keys are all masked
gets attention weights 0, so it contributes nothing and its output is ``bo``.

Beyond ``nn.MultiheadAttention``: the causal flag and sliding windows are position masks
(:func:`position_mask`, either alignment), merged with the given masks as a bool mask is;
grouped-query attention (Hkv = ``num_kv_heads`` key/value heads, ``Wk``/``Wv`` of Hkv*hd rows)
lets query head h read key/value head ``h // (H // Hkv)``: consecutive query heads share one
(:func:`kv_head_of`). The other convention, interleaved (``h % Hkv``, what ``kv.repeat(1, G, 1, 1)``
gives instead of ``repeat_interleave``), is a classic porting bug.

Rotary position embeddings (:func:`rotary`, a declared :class:`~attnspec.config.Rope`) turn each
query and key head by its absolute position, after the head split and before scaling; values are
never rotated. Two rotated vectors' dot product depends only on their positions' difference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import CanonicalWeights


def to_batch_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """(L, N, D) or (N, L, D) or unbatched (L, D) -> (N, L, D)."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    return x if batch_first else x.transpose(0, 1)


def from_batch_first(x: torch.Tensor, batch_first: bool, batched: bool) -> torch.Tensor:
    """Inverse of :func:`to_batch_first`."""
    if not batched:
        return x.squeeze(0)
    return x if batch_first else x.transpose(0, 1)


def additive_mask(key_padding_mask, attn_mask, N: int, H: int, L: int, S: int, dtype) -> torch.Tensor:
    """Both masks merged into one float mask (N, H, L, S) that is added to the logits.

    bool ``True`` means masked (-inf); floats are added as they are. A 3-D
    ``attn_mask`` is (N*H, L, S) indexed ``b*H + h``.
    """
    total = torch.zeros(N, H, L, S, dtype=dtype, device=_device(key_padding_mask, attn_mask))

    def as_float(m):
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool \
            else m.to(dtype)

    if attn_mask is not None:
        m = as_float(attn_mask)
        total = total + (m.view(N, H, L, S) if m.dim() == 3 else m)  # (L, S) broadcasts
    if key_padding_mask is not None:
        m = as_float(key_padding_mask).reshape(N, 1, 1, S)  # unbatched (S,) -> (1, 1, 1, S)
        total = total + m
    return total


def kv_head_of(h: int, num_heads: int, num_kv_heads: int) -> int:
    """The key/value head that query head ``h`` reads: ``h // (num_heads // num_kv_heads)``."""
    return h // (num_heads // num_kv_heads)


def expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, Hkv, S, d) -> (N, H, S, d): each key/value head repeated for its group of consecutive query heads."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


def rotary(x: torch.Tensor, positions: torch.Tensor, rope) -> torch.Tensor:
    """Rotary position embedding of heads ``x`` (N, H, T, hd) at ``positions`` (T,) or per item (N, T).

    The leading ``r = rope.rotated(hd)`` features form r/2 pairs: ``(i, i + r/2)`` (``"rotate_half"``) or
    ``(2i, 2i + 1)`` (``"interleaved"``); pair i turns by ``position * base ** (-2i / r)``, computed in
    ``x``'s dtype. The other features pass unchanged.
    """
    hd = x.shape[-1]
    r = rope.rotated(hd)
    if r < 2 or r % 2:
        raise ValueError(f"rope fraction={rope.fraction} rotates {r} of head_dim={hd} features, but should "
                         "rotate an even number, at least 2")
    inv_freq = rope.base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)  # (r/2,)
    pos = positions.to(device=x.device, dtype=x.dtype)
    pos = pos[None, None, :, None] if pos.dim() == 1 else pos[:, None, :, None]  # (1 or N, 1, T, 1)
    angles = pos * inv_freq.to(device=x.device, dtype=x.dtype)  # (·, 1, T, r/2)
    cos, sin = angles.cos(), angles.sin()
    rot, rest = x[..., :r], x[..., r:]
    if rope.pairing == "rotate_half":
        a, b = rot[..., : r // 2], rot[..., r // 2:]  # (N, H, T, r/2) each: feature i pairs with i + r/2
        turned = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (N, H, T, r)
    else:
        pairs = rot.reshape(*rot.shape[:-1], r // 2, 2)  # (N, H, T, r/2, 2): features 2i and 2i + 1
        a, b = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(rot.shape)  # (N, H, T, r)
    return torch.cat([turned, rest], dim=-1)  # (N, H, T, hd)


def position_mask(L: int, S: int, *, is_causal=False, window=None, alignment="top-left", device=None):
    """The keys hidden by position, bool (L, S) with True = masked, or None when nothing is.

    Query i sits at key position ``pos = i`` (``"top-left"``) or ``i + S - L`` (``"bottom-right"``).
    Causal: keys after ``pos`` are hidden. ``window=(left, right)``: keys before ``pos - left`` or
    after ``pos + right`` are hidden (None: that side unbounded).
    """
    if alignment not in ("top-left", "bottom-right"):
        raise ValueError(f"alignment={alignment!r}, but should be 'top-left' or 'bottom-right'")
    if not is_causal and (window is None or window == (None, None)):
        return None
    offset = 0 if alignment == "top-left" else S - L
    pos = torch.arange(L, device=device)[:, None] + offset  # (L, 1): each query's key position
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    hidden = torch.zeros(L, S, dtype=torch.bool, device=device)
    if is_causal:
        hidden |= j > pos
    if window is not None:
        left, right = window
        if left is not None:
            hidden |= j < pos - left
        if right is not None:
            hidden |= j > pos + right
    return hidden


def with_positions(attn_mask, positions):
    """``attn_mask`` ((L, S) or (N*H, L, S), or None) with the position mask (L, S) merged in, as masks add."""
    if positions is None:
        return attn_mask
    if attn_mask is None:
        return positions
    if attn_mask.dtype == torch.bool:
        return attn_mask | positions
    return attn_mask + torch.zeros(positions.shape, dtype=attn_mask.dtype,
                                   device=attn_mask.device).masked_fill(positions.to(attn_mask.device), float("-inf"))


def _device(*tensors):
    return next((t.device for t in tensors if t is not None), None)


def softmax_zero_on_empty(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; a row that is all -inf gets weights 0 (and zero gradient)."""
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
    return torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def mix_heads(x: torch.Tensor, weight, bias) -> torch.Tensor:
    """Talking heads: a linear map across the head axis of (N, H, L, S)."""
    if weight is None:
        return x
    x = torch.einsum("gh,nhls->ngls", weight, x)  # (N, H, L, S)
    return x if bias is None else x + bias[None, :, None, None]


def project(x, W, b):
    """``x @ W.T + b``; no ``W`` is the identity (a module without an output projection)."""
    y = x if W is None else x @ W.transpose(0, 1)
    return y if b is None else y + b


def attention_logits(query, key, value, w: CanonicalWeights, *, num_heads, batch_first=False,
                     add_zero_attn=False, scale_keys=False, rope=None, positions=None):
    """Projections, appended keys, head split and RoPE: returns (logits, v) as (N, H, L, S'), (N, H, S', hd).

    ``rope`` with ``positions = (query positions, key positions)`` rotates q and k (:func:`rotary`)."""
    xq, xk, xv = (to_batch_first(t, batch_first) for t in (query, key, value))
    N, L, _ = xq.shape
    q, k, v = project(xq, w.Wq, w.bq), project(xk, w.Wk, w.bk), project(xv, w.Wv, w.bv)  # (N, ·, E), (N, S, Ekv)
    E, Ekv = q.shape[-1], k.shape[-1]
    H, hd = num_heads, E // num_heads
    Hkv = Ekv // hd  # key/value heads: H, or fewer (grouped-query attention)
    if rope is not None and (w.bias_k is not None or add_zero_attn):
        raise ValueError("rope with add_bias_kv or add_zero_attn: appended keys have no position; not defined")
    if w.bias_k is not None:  # one more key and value, appended along the sequence
        k = torch.cat([k, w.bias_k.expand(N, 1, Ekv)], dim=1)  # (N, S+1, Ekv)
        v = torch.cat([v, w.bias_v.expand(N, 1, Ekv)], dim=1)
    q = q.view(N, L, H, hd).transpose(1, 2)  # (N, H, L, hd): head h = features [h*hd, (h+1)*hd)
    k = k.view(N, k.shape[1], Hkv, hd).transpose(1, 2)  # (N, Hkv, S', hd); S' may be 0
    v = v.view(N, v.shape[1], Hkv, hd).transpose(1, 2)  # (N, Hkv, S', hd)
    if rope is not None:
        q, k = rotary(q, positions[0], rope), rotary(k, positions[1], rope)
    k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)  # (N, H, S', hd): query head h reads kv head h // (H/Hkv)
    if add_zero_attn:  # a zero key and a zero value, after the split
        k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)
        v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
    scale = hd ** -0.5
    logits = q @ (k * scale).transpose(-2, -1) if scale_keys else (q * scale) @ k.transpose(-2, -1)
    return logits, v  # (N, H, L, S'), (N, H, S', hd)


def pad_masks(key_padding_mask, attn_mask, extra: int):
    """Append ``extra`` always-visible key columns to both masks."""
    pad = lambda m: None if m is None else F.pad(m, (0, extra), value=False if m.dtype == torch.bool else 0.0)  # noqa: E731
    return (pad(key_padding_mask), pad(attn_mask)) if extra else (key_padding_mask, attn_mask)


def multi_head_attention(query, key, value, weights: CanonicalWeights, *, num_heads: int,
                         key_padding_mask=None, attn_mask=None, need_weights=True,
                         average_attn_weights=True, batch_first=False, add_zero_attn=False,
                         scale_keys=False, is_causal=False, window=None, alignment="top-left",
                         rope=None, positions=None):
    """``nn.MultiheadAttention.forward`` for the given canonical weights; returns (output, weights).

    Output has the query's layout; weights are batch-first, ``(N, L, S')`` averaged
    over heads or ``(N, H, L, S')`` per head (unbatched: without N), or None.
    ``is_causal`` and ``window`` hide keys by position (:func:`position_mask`, placed by
    ``alignment``), merged with the masks; appended keys stay visible. ``rope`` and ``positions``:
    rotary embeddings of queries and keys (:func:`attention_logits`).
    """
    batched = query.dim() == 3
    logits, v = attention_logits(query, key, value, weights, num_heads=num_heads,
                                 batch_first=batch_first, add_zero_attn=add_zero_attn,
                                 scale_keys=scale_keys, rope=rope, positions=positions)
    N, H, L, S1 = logits.shape
    S = to_batch_first(key, batch_first).shape[1]
    extra = S1 - S
    hidden = position_mask(L, S, is_causal=is_causal, window=window, alignment=alignment, device=logits.device)
    attn_mask = with_positions(attn_mask, hidden)
    kpm, am = pad_masks(key_padding_mask, attn_mask, extra)
    if kpm is not None or am is not None:
        logits = logits + additive_mask(kpm, am, N, H, L, S1, logits.dtype)
    logits = mix_heads(logits, weights.mix_pre, weights.mix_pre_bias)
    attn = softmax_zero_on_empty(logits)  # (N, H, L, S')
    attn = mix_heads(attn, weights.mix_post, weights.mix_post_bias)
    heads = attn @ v  # (N, H, L, hd)
    merged = heads.transpose(1, 2).reshape(N, L, H * v.shape[-1])  # (N, L, E): heads side by side; L may be 0
    out = from_batch_first(project(merged, weights.Wo, weights.bo), batch_first, batched)
    if not need_weights:
        return out, None
    returned = attn.mean(dim=1) if average_attn_weights else attn  # (N, L, S') or (N, H, L, S')
    return out, (returned if batched else returned.squeeze(0))


def per_head_attention(query, key, value, weights: CanonicalWeights, *, num_heads: int,
                       key_padding_mask=None, attn_mask=None, batch_first=False, add_zero_attn=False,
                       is_causal=False, window=None, alignment="top-left", rope=None, positions=None):
    """The same output built head by head with ``F.scaled_dot_product_attention``.

    An independent formulation of the head split: head h sees feature block h of
    the query projection and block ``kv_head_of(h)`` of the key and value projections;
    the heads are concatenated, then projected by ``Wo``.
    """
    batched = query.dim() == 3
    xq, xk, xv = (to_batch_first(t, batch_first) for t in (query, key, value))
    N, L, E = xq.shape[0], xq.shape[1], weights.Wq.shape[0]
    hd = E // num_heads
    Hkv = weights.Wk.shape[0] // hd
    hidden = position_mask(L, xk.shape[1], is_causal=is_causal, window=window, alignment=alignment)
    attn_mask = with_positions(attn_mask, hidden)
    extra = int(weights.bias_k is not None) + int(add_zero_attn)
    kpm, am = pad_masks(key_padding_mask, attn_mask, extra)
    S1 = xk.shape[1] + extra
    mask = additive_mask(kpm, am, N, num_heads, L, S1, xq.dtype) if (kpm is not None or am is not None) else None
    outs = []
    for h in range(num_heads):
        block = slice(h * hd, (h + 1) * hd)
        g = kv_head_of(h, num_heads, Hkv)
        kv_block = slice(g * hd, (g + 1) * hd)
        bias = lambda b, blk: None if b is None else b[blk]  # noqa: E731
        q = project(xq, weights.Wq[block], bias(weights.bq, block))  # (N, L, hd)
        k = project(xk, weights.Wk[kv_block], bias(weights.bk, kv_block))  # (N, S, hd)
        v = project(xv, weights.Wv[kv_block], bias(weights.bv, kv_block))
        if weights.bias_k is not None:
            k = torch.cat([k, weights.bias_k[kv_block].expand(N, 1, hd)], dim=1)
            v = torch.cat([v, weights.bias_v[kv_block].expand(N, 1, hd)], dim=1)
        if rope is not None:  # one head: (N, 1, T, hd) for rotary, then back
            q = rotary(q[:, None], positions[0], rope)[:, 0]  # (N, L, hd)
            k = rotary(k[:, None], positions[1], rope)[:, 0]  # (N, S, hd)
        if add_zero_attn:
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # (N, S', hd)
        m = None if mask is None else mask[:, h]  # (N, L, S'), additive; SDPA gives empty rows 0
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    merged = torch.cat(outs, dim=-1)  # (N, L, E)
    return from_batch_first(project(merged, weights.Wo, weights.bo), batch_first, batched)
