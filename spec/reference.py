"""The float64 reference: ``nn.MultiheadAttention`` semantics (slow path), written out once.

The same functions run in any dtype; :mod:`attnspec.tolerances` calls them in the
implementation's dtype to measure what a plain computation of the same math errs by.
Names: N batch, L query length, S key length (S' = S plus appended keys),
E embed_dim, H heads, hd = E // H head width.

Policy (see docs/semantics.md, "Fully masked rows"): a query row whose keys are all masked
gets attention weights 0, so it contributes nothing and its output is ``bo``.

Beyond ``nn.MultiheadAttention``: the causal flag and sliding windows are position masks
(:func:`attnspec.masks.position_mask`, either alignment), merged with the given masks as a bool mask is
(every mask is merged by :func:`attnspec.masks.combined`, the suite's one mask algebra);
grouped-query attention (Hkv = ``num_kv_heads`` key/value heads, ``Wk``/``Wv`` of Hkv*hd rows)
lets query head h read key/value head ``h // (H // Hkv)``: consecutive query heads share one
(:func:`kv_head_of`). The other convention, interleaved (``h % Hkv``, what ``kv.repeat(1, G, 1, 1)``
gives instead of ``repeat_interleave``), is a classic porting bug.

Rotary position embeddings (:func:`rotary`, a declared :class:`~attnspec.config.Rope`) turn each
query and key head by its absolute position, after the head split and before scaling; values are
never rotated. Two rotated vectors' dot product depends only on their positions' difference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import masks
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


def kv_head_of(h: int, num_heads: int, num_kv_heads: int) -> int:
    """The key/value head that query head ``h`` reads: ``h // (num_heads // num_kv_heads)``."""
    return h // (num_heads // num_kv_heads)


def expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, Hkv, S, d) -> (N, H, S, d): each key/value head repeated for its group of consecutive query heads."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


def rotary_frequencies(rope, r: int, reached: int = 0) -> tuple:
    """The r/2 pair frequencies ``base ** (-2i / r)``, rescaled as ``rope.scaling`` says
    (:class:`~attnspec.config.RopeScaling`), float64 (r/2,), and the factor cos and sin are multiplied by.
    ``reached``: the largest position of the call (dynamic NTK rescales once it passes the trained context)."""
    i2 = torch.arange(0, r, 2, dtype=torch.float64)  # (r/2,): 2i
    scaling, base = rope.scaling, rope.base
    if scaling is not None and scaling.kind == "dynamic" and reached + 1 > scaling.original_max_positions:
        grown = scaling.factor * (reached + 1) / scaling.original_max_positions - (scaling.factor - 1)
        base = base * grown ** (r / (r - 2)) if r > 2 else base
    freq = base ** (-i2 / r)  # (r/2,)
    if scaling is None or scaling.kind == "dynamic":
        return freq, 1.0
    if scaling.kind == "linear":
        return freq / scaling.factor, 1.0
    if scaling.kind == "llama3":
        old = scaling.original_max_positions
        wavelength = 2 * math.pi / freq
        t = (old / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = (1 - t) * freq / scaling.factor + t * freq
        low, high = old / scaling.low_freq_factor, old / scaling.high_freq_factor
        return torch.where(wavelength > low, freq / scaling.factor, torch.where(wavelength < high, freq, blended)), 1.0
    def pair_at(rotations):  # the (fractional) pair index whose wavelength fits `rotations` turns in the context
        return r * math.log(scaling.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(rope.base))

    fast, slow = pair_at(scaling.beta_fast), pair_at(scaling.beta_slow)
    lo = max(math.floor(fast) if scaling.truncate else fast, 0)
    hi = min(math.ceil(slow) if scaling.truncate else slow, r - 1)
    ramp = ((torch.arange(r // 2, dtype=torch.float64) - lo) / ((hi - lo) or 0.001)).clamp(0, 1)  # (r/2,)
    mixed = freq / scaling.factor * ramp + freq * (1 - ramp)
    factor = scaling.attention_factor if scaling.attention_factor is not None else 0.1 * math.log(scaling.factor) + 1
    return mixed, factor


def largest_position(positions) -> int:
    """The largest of the query and key positions of a call (0 for none)."""
    return max((int(t.max()) for t in positions if t.numel()), default=0)


def rotary(x: torch.Tensor, positions: torch.Tensor, rope, reached: int | None = None) -> torch.Tensor:
    """Rotary position embedding of heads ``x`` (N, H, T, hd) at ``positions`` (T,) or per item (N, T).

    The leading ``r = rope.rotated(hd)`` features form r/2 pairs: ``(i, i + r/2)`` (``"rotate_half"``) or
    ``(2i, 2i + 1)`` (``"interleaved"``); pair i turns by ``position * f_i``, computed in ``x``'s dtype, with the
    frequencies of :func:`rotary_frequencies` (``reached``: the call's largest position, default the largest of
    ``positions``). The other features pass unchanged.
    """
    hd = x.shape[-1]
    r = rope.rotated(hd)
    if r < 2 or r % 2:
        raise ValueError(f"rope fraction={rope.fraction} rotates {r} of head_dim={hd} features, but should "
                         "rotate an even number, at least 2")
    reached = int(positions.max()) if reached is None and positions.numel() else (reached or 0)
    inv_freq, factor = rotary_frequencies(rope, r, reached)  # (r/2,)
    pos = positions.to(device=x.device, dtype=x.dtype)
    pos = pos[None, None, :, None] if pos.dim() == 1 else pos[:, None, :, None]  # (1 or N, 1, T, 1)
    angles = pos * inv_freq.to(device=x.device, dtype=x.dtype)  # (·, 1, T, r/2)
    return turned(x, angles.cos() * factor, angles.sin() * factor, rope.pairing)


def turned(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str) -> torch.Tensor:
    """``x`` (..., T, hd) with its leading ``r = 2 * cos.shape[-1]`` features turned pair by pair: pair i by the
    angle whose cosine and sine are ``cos[..., t, i]`` and ``sin[..., t, i]`` (broadcast against x's leading axes),
    ``(a, b) -> (a cos - b sin, a sin + b cos)``, in ``x``'s dtype. Pairs are ``(i, i + r/2)`` (``"rotate_half"``,
    GPT-NeoX's) or ``(2i, 2i + 1)`` (``"interleaved"``, GPT-J's and flash-attn's default). The rest pass unchanged."""
    r = 2 * cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot, rest = x[..., :r], x[..., r:]
    if pairing == "rotate_half":
        a, b = rot[..., : r // 2], rot[..., r // 2:]  # (..., T, r/2) each: feature i pairs with i + r/2
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (..., T, r)
    else:
        pairs = rot.reshape(*rot.shape[:-1], r // 2, 2)  # (..., T, r/2, 2): features 2i and 2i + 1
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(rot.shape)  # (..., T, r)
    return torch.cat([out, rest], dim=-1)  # (..., T, hd)


def softmax_zero_on_empty(logits: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis; a row that is all -inf gets weights 0 (and zero gradient).

    ``sinks`` (H,): a learned logit per head that joins each row's denominator and takes no value
    (gpt-oss's attention sinks): the weights of a row sum to less than 1, and a fully masked row is 0.
    """
    if sinks is not None:  # one more column per row, the head's sink, dropped after the softmax
        sink = sinks.to(logits.dtype).reshape(1, -1, 1, 1).expand(*logits.shape[:-1], 1)  # (N, H, L, 1)
        return torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]  # (N, H, L, S)
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
    return torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """The natural-log sum of exponentials of each row's final logits (N, H, L, S) -> (N, H, L): the LSE a kernel
    returns; -inf for a row whose keys are all hidden (and for a row of no keys)."""
    if logits.shape[-1] == 0:
        return logits.new_full(logits.shape[:-1], float("-inf"))
    return torch.logsumexp(logits, dim=-1)


def softcapped(scores: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(scores / cap)`` (Gemma-2's logit soft-capping, FlashAttention's ``softcap``); a cap of 0 or
    None leaves the scores as they are. Applied to the scaled scores, before any bias or mask."""
    return scores if not cap else cap * torch.tanh(scores / cap)


def query_positions(L: int, S: int, alignment: str, device=None) -> torch.Tensor:
    """Each query's key position (L,): ``i`` (``"top-left"``) or ``i + S - L`` (``"bottom-right"``)."""
    return torch.arange(L, device=device) + (0 if alignment == "top-left" else S - L)


def alibi_bias(slopes: torch.Tensor, L: int, S: int, *, alignment: str = "bottom-right") -> torch.Tensor:
    """ALiBi's bias ``-slope * |pos_i - j|`` for queries at their key positions (:func:`query_positions`).

    ``slopes`` (H,) or (N, H) -> (1 or N, H, L, S) in the slopes' dtype. Under causality (every visible key
    j <= pos_i) this is ``slope * (j - pos_i)``, MPT's and BLOOM's bias up to a constant per row."""
    slopes = slopes if slopes.dim() == 2 else slopes[None]  # (N or 1, H)
    pos = query_positions(L, S, alignment, slopes.device).to(slopes.dtype)  # (L,)
    j = torch.arange(S, device=slopes.device, dtype=slopes.dtype)  # (S,)
    distance = (pos[:, None] - j[None, :]).abs()  # (L, S)
    return -slopes[:, :, None, None] * distance  # (N or 1, H, L, S)


def scores(q: torch.Tensor, k: torch.Tensor, *, scale: float, softcap: float | None = None,
           bias: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final logits (N, H, L, S) of queries (N, H, L, d) and keys (N, H, S, d), in this order:
    ``scale * q @ kᵀ``, soft-capped (:func:`softcapped`), plus ``bias`` (ALiBi), plus the additive ``mask``.

    The order is FlashAttention's: a cap applied after the mask would let a masked key back in."""
    logits = softcapped(scale * (q @ k.transpose(-2, -1)), softcap)  # (N, H, L, S)
    logits = logits if bias is None else logits + bias
    return logits if mask is None else logits + mask


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


def rms_normalized(x: torch.Tensor, weight: torch.Tensor, qk_norm) -> torch.Tensor:
    """QK-norm: ``x / sqrt(mean(x ** 2) + eps) * (offset + weight)`` over the last axis (:class:`~attnspec.config.QKNorm`)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + qk_norm.eps) * (qk_norm.offset + weight.to(x.dtype))


def heads_of(query, key, value, w: CanonicalWeights, *, num_heads, batch_first=False, add_zero_attn=False,
             rope=None, positions=None, qk_norm=None):
    """Projections, QK-norm, appended keys, head split and RoPE: ``q`` (N, H, L, hd), ``k`` and ``v``
    (N, H, S', hd), each key/value head repeated for its group of query heads.

    ``qk_norm`` normalises q and k (:func:`rms_normalized`) over the whole projection or each head, before RoPE;
    ``rope`` with ``positions = (query positions, key positions)`` rotates q and k (:func:`rotary`)."""
    xq, xk, xv = (to_batch_first(t, batch_first) for t in (query, key, value))
    N, L, _ = xq.shape
    q, k, v = project(xq, w.Wq, w.bq), project(xk, w.Wk, w.bk), project(xv, w.Wv, w.bv)  # (N, ·, E), (N, S, Ekv)
    if qk_norm is not None and qk_norm.over == "all":
        q, k = rms_normalized(q, w.q_norm, qk_norm), rms_normalized(k, w.k_norm, qk_norm)
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
    if qk_norm is not None and qk_norm.over == "head":
        q, k = rms_normalized(q, w.q_norm, qk_norm), rms_normalized(k, w.k_norm, qk_norm)
    if rope is not None:
        reached = largest_position(positions)
        q, k = rotary(q, positions[0], rope, reached), rotary(k, positions[1], rope, reached)
    k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)  # (N, H, S', hd): query head h reads kv head h // (H/Hkv)
    if add_zero_attn:  # a zero key and a zero value, after the split
        k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)
        v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
    return q, k, v


def attention_logits(query, key, value, w: CanonicalWeights, *, num_heads, batch_first=False,
                     add_zero_attn=False, rope=None, positions=None, qk_norm=None, scale=None, softcap=None):
    """The logits (N, H, L, S') before masks and biases (scaled, soft-capped), and the values (N, H, S', hd)."""
    q, k, v = heads_of(query, key, value, w, num_heads=num_heads, batch_first=batch_first,
                       add_zero_attn=add_zero_attn, rope=rope, positions=positions, qk_norm=qk_norm)
    return scores(q, k, scale=q.shape[-1] ** -0.5 if scale is None else scale, softcap=softcap), v


def attend(q, k, v, *, mask=None, softcap=None, bias=None, sinks=None, mix_pre=(None, None), mix_post=(None, None)):
    """The attention of heads: ``softmax(scores) @ v`` for the :func:`scores` of scaled queries ``q``.

    ``q`` (N, H, L, d), ``k`` (N, H, S, d), ``v`` (N, H, S, dv); ``softcap``, ``bias`` (ALiBi) and ``mask``
    (additive, broadcastable to (N, H, L, S)) as :func:`scores` applies them; ``sinks`` (H,) join each row's
    denominator; ``mix_pre`` / ``mix_post``: talking-heads (weight, bias) across the head axis, before and
    after the softmax. Returns ``(heads (N, H, L, dv), weights (N, H, L, S))``; a row whose keys are all
    masked gets weights 0 (:func:`softmax_zero_on_empty`).
    """
    logits = scores(q, k, scale=1.0, softcap=softcap, bias=bias, mask=mask)  # (N, H, L, S)
    weights = mix_heads(softmax_zero_on_empty(mix_heads(logits, *mix_pre), sinks), *mix_post)  # (N, H, L, S)
    return weights @ v, weights


def multi_head_attention(query, key, value, weights: CanonicalWeights, *, num_heads: int,
                         key_padding_mask=None, attn_mask=None, need_weights=True,
                         average_attn_weights=True, batch_first=False, add_zero_attn=False,
                         scale_keys=False, is_causal=False, window=None, alignment="top-left",
                         rope=None, positions=None, qk_norm=None, scale=None, softcap=None):
    """``nn.MultiheadAttention.forward`` for the given canonical weights; returns (output, weights).

    Output has the query's layout; weights are batch-first, ``(N, L, S')`` averaged
    over heads or ``(N, H, L, S')`` per head (unbatched: without N), or None.
    ``is_causal`` and ``window`` hide keys by position (:func:`attnspec.masks.position_mask`, placed by
    ``alignment``), merged with the masks; appended keys stay visible. ``rope`` and ``positions``:
    rotary embeddings of queries and keys; ``qk_norm``: their normalisation (:func:`heads_of`).
    ``scale`` (default ``head_dim ** -0.5``) and ``softcap`` make the logits; the weights' ALiBi slopes
    (placed by ``alignment``) and sinks join them (:func:`attend`).
    """
    batched = query.dim() == 3
    q, k, v = heads_of(query, key, value, weights, num_heads=num_heads, batch_first=batch_first,
                       add_zero_attn=add_zero_attn, rope=rope, positions=positions,
                       qk_norm=qk_norm)  # (N, H, L|S', hd)
    N, H, L, hd = q.shape
    S = to_batch_first(key, batch_first).shape[1]
    scale = hd ** -0.5 if scale is None else scale
    q, k = (q, k * scale) if scale_keys else (q * scale, k)
    hidden = masks.position_mask(L, S, is_causal=is_causal, window=window, alignment=alignment, device=q.device)
    mask = masks.combined(key_padding_mask, attn_mask, batch=N, num_heads=H, queries=L, keys=S, dtype=q.dtype,
                          positions=hidden, extra_keys=k.shape[2] - S)  # (N|1, H|1, L|1, S') or None
    slopes = None if weights.alibi_slopes is None else weights.alibi_slopes.to(q.dtype)
    bias = None if slopes is None else alibi_bias(slopes, L, S, alignment=alignment)  # (1, H, L, S)
    heads, attn = attend(q, k, v, mask=mask, softcap=softcap, bias=bias, sinks=weights.sinks,
                         mix_pre=(weights.mix_pre, weights.mix_pre_bias),
                         mix_post=(weights.mix_post, weights.mix_post_bias))  # (N, H, L, hd), (N, H, L, S')
    merged = heads.transpose(1, 2).reshape(N, L, H * v.shape[-1])  # (N, L, E): heads side by side; L may be 0
    out = from_batch_first(project(merged, weights.Wo, weights.bo), batch_first, batched)
    if not need_weights:
        return out, None
    returned = attn.mean(dim=1) if average_attn_weights else attn  # (N, L, S') or (N, H, L, S')
    return out, (returned if batched else returned.squeeze(0))


def per_head_attention(query, key, value, weights: CanonicalWeights, *, num_heads: int,
                       key_padding_mask=None, attn_mask=None, batch_first=False, add_zero_attn=False,
                       is_causal=False, window=None, alignment="top-left", rope=None, positions=None,
                       qk_norm=None, scale=None, softcap=None):
    """The same output built head by head with ``F.scaled_dot_product_attention`` (:func:`attend` where a
    softcap or sinks take part).

    An independent formulation of the head split: head h sees feature block h of
    the query projection and block ``kv_head_of(h)`` of the key and value projections;
    the heads are concatenated, then projected by ``Wo``. A QK-norm must be per head.
    """
    if qk_norm is not None and qk_norm.over != "head":
        raise ValueError("per_head_attention: a QK-norm over the whole projection does not split by head")
    batched = query.dim() == 3
    xq, xk, xv = (to_batch_first(t, batch_first) for t in (query, key, value))
    N, L, E = xq.shape[0], xq.shape[1], weights.Wq.shape[0]
    hd = E // num_heads
    Hkv = weights.Wk.shape[0] // hd
    hidden = masks.position_mask(L, xk.shape[1], is_causal=is_causal, window=window, alignment=alignment)
    extra = int(weights.bias_k is not None) + int(add_zero_attn)
    mask = masks.combined(key_padding_mask, attn_mask, batch=N, num_heads=num_heads, queries=L, keys=xk.shape[1],
                          dtype=xq.dtype, positions=hidden, extra_keys=extra)  # (N|1, H|1, L|1, S') or None
    if mask is not None:
        mask = mask.expand(N, num_heads, L, xk.shape[1] + extra)  # (N, H, L, S')
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
        if qk_norm is not None:
            q, k = rms_normalized(q, weights.q_norm, qk_norm), rms_normalized(k, weights.k_norm, qk_norm)
        if rope is not None:  # one head: (N, 1, T, hd) for rotary, then back
            reached = largest_position(positions)
            q = rotary(q[:, None], positions[0], rope, reached)[:, 0]  # (N, L, hd)
            k = rotary(k[:, None], positions[1], rope, reached)[:, 0]  # (N, S, hd)
        if add_zero_attn:
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # (N, S', hd)
        m = None if mask is None else mask[:, h]  # (N, L, S'), additive; SDPA gives empty rows 0
        if weights.alibi_slopes is not None:
            alibi = alibi_bias(weights.alibi_slopes[h:h + 1].to(q.dtype), L, k.shape[1], alignment=alignment)[0]
            m = alibi if m is None else m + alibi  # (1 or N, L, S')
        step = hd ** -0.5 if scale is None else scale
        if softcap or weights.sinks is not None:
            sink = None if weights.sinks is None else weights.sinks[h:h + 1]
            outs.append(attend(q[:, None] * step, k[:, None], v[:, None], mask=None if m is None else m[:, None],
                               softcap=softcap, sinks=sink)[0][:, 0])  # (N, L, hd)
        else:
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=step))
    merged = torch.cat(outs, dim=-1)  # (N, L, E)
    return from_batch_first(project(merged, weights.Wo, weights.bo), batch_first, batched)
