"""Attention as it is written today: a causal flag, grouped-query heads, a sliding window, masks, and the logit
features of 2024-25 decoders.

``ModernAttention`` takes all of them at once, batch-first (or unbatched), with separate
``q_proj``/``k_proj``/``v_proj``/``o_proj`` projections (the Llama naming):

* ``is_causal=True`` hides the future; ``causal=True`` in the constructor makes every call causal (a decoder
  built causal). ``causal_alignment`` places the diagonal when L != S: ``"top-left"`` (query i sees keys 0..i,
  as SDPA's ``is_causal``) or ``"bottom-right"`` (query i sees keys 0..i + S - L, as FlashAttention's
  ``causal``: the last query sees every key).
* ``num_kv_heads`` key/value heads (a divisor of ``num_heads``; 1 is multi-query attention):
  query head h reads key/value head ``h // (num_heads // num_kv_heads)``, i.e. the key/value
  heads are expanded with ``repeat_interleave``.
* ``window=(left, right)``: query i (at key position pos, placed as the diagonal is) sees keys
  ``pos - left`` to ``pos + right``; either side may be None (unbounded).
* ``key_padding_mask`` (N, S) and ``attn_mask`` (L, S) or (N*H, L, S), in
  ``nn.MultiheadAttention``'s polarity (bool True = masked, floats added); all of the above
  combine, as masks add.
* ``rope`` (an :class:`attnspec.Rope`): rotary position embeddings on queries and keys, per head, before
  scaling, with its long-context rescaling (``Rope.scaling``: linear, dynamic NTK, Llama 3.1's, YaRN);
  ``forward`` then takes ``positions`` (L,) or (N, L) and ``key_positions`` (S,) or (N, S), absolute int
  positions (default 0, 1, ...).
* a key/value cache for incremental decoding: ``cache = module.new_cache(N, max_length)``, then
  ``module.decode(x, cache, positions)`` for the prefill and every further chunk of tokens (N, T, E);
  each token sees the cached ones and those before it in its chunk (bottom-right causality).

The logits of query i and key j, in this order (FlashAttention's, Gemma-2's):

* ``softmax_scale * q_i . k_j`` (default ``head_dim ** -0.5``; Gemma's ``query_pre_attn_scalar ** -0.5``);
* ``softcap * tanh(s / softcap)`` with a ``softcap`` (Gemma-2): a smooth bound, before any mask, so that a
  masked key stays masked;
* ``- slope_h * |pos_i - j|`` with ``alibi=True`` (MPT, BLOOM): a learned-or-fixed slope per head, the ALiBi
  paper's geometric ones at first, query i at its aligned position;
* then the masks. With ``sinks=True`` (gpt-oss) each head has a learned logit that joins every row's softmax
  denominator and takes no value, so a row's weights sum to less than one.

``qk_norm`` (an :class:`attnspec.QKNorm`: Qwen3, OLMo-2, Gemma-3) RMS-normalises queries and keys, per head or
over the whole projection, with learned weights ``q_norm``/``k_norm``, before RoPE.

A query row that sees no key gets attention 0 (its output is ``o_proj.bias``). Two paths:
with ``need_weights=True`` the weights are computed explicitly and returned; without, the
attention runs in ``F.scaled_dot_product_attention`` (with its own ``is_causal`` where that is
all there is) unless a soft cap or sinks need the explicit softmax. Names: N batch, L queries, S keys,
E embed_dim, H heads, Hkv key/value heads, hd = E // H, r rotated features of a head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, QKNorm, Rope, RopeScaling, from_linears, to_linears
from attnspec.adapter import copy_
from attnspec.config import ALIGNMENTS, check_window


class KVCache:
    """Keys and values of the tokens seen so far, preallocated: (N, Hkv, max_length, hd) each, ``length`` used."""

    def __init__(self, batch, num_kv_heads, max_length, head_dim, dtype, device):
        shape = (batch, num_kv_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (N, Hkv, max_length, hd)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def write(self, start, k, v):
        """Store k, v (N, Hkv, T, hd) at positions start..start+T-1 of the cache; return all keys and values so far."""
        end = start + k.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"cache of max_length={self.keys.shape[2]} cannot hold {end} tokens")
        self.keys[:, :, start:end], self.values[:, :, start:end] = k, v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]  # (N, Hkv, end, hd) each


def geometric_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's default slopes (H,): for a power of two n, ``2 ** (-8 h / n)`` for h = 1..n; otherwise those of the
    largest power of two below n, then every other slope of the next power of two (the ALiBi paper's recipe)."""
    def powers(n):
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    below = 2 ** int(math.log2(num_heads))
    slopes = powers(below) + powers(2 * below)[0::2][:num_heads - below]
    return torch.tensor(slopes, dtype=torch.float64)


def _positive(name, value):
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and 0 < value < float("inf")):
        raise ValueError(f"{name}={value!r}, but should be None or a positive finite number")


class ModernAttention(nn.Module):
    """Correct: a causal flag of either alignment, grouped-query heads, a sliding window, masks, RoPE (scaled or not),
    a softmax scale, a logit soft cap, ALiBi, attention sinks and QK-norm, at once."""

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, window=None, causal_alignment="top-left",
                 bias=True, rope=None, softmax_scale=None, softcap=None, alibi=False, sinks=False, qk_norm=None,
                 causal=False, device=None, dtype=None):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}, but should be a positive int")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not isinstance(num_kv_heads, int) or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads!r}, but should be a positive int dividing "
                             f"num_heads={num_heads}")
        if causal_alignment not in ALIGNMENTS:
            raise ValueError(f"causal_alignment={causal_alignment!r}, but should be one of {ALIGNMENTS}")
        if rope is not None and not isinstance(rope, Rope):
            raise ValueError(f"rope={rope!r}, but should be None or an attnspec.Rope")
        if rope is not None and not rope.fits(embed_dim // num_heads):
            raise ValueError(f"rope={rope.short()} rotates {rope.rotated(embed_dim // num_heads)} features of "
                             f"head_dim={embed_dim // num_heads}, but should rotate an even number, at least 2 "
                             "(4 under dynamic scaling)")
        _positive("softmax_scale", softmax_scale)
        _positive("softcap", softcap)
        if qk_norm is not None and not isinstance(qk_norm, QKNorm):
            raise ValueError(f"qk_norm={qk_norm!r}, but should be None or an attnspec.QKNorm")
        for name, value in (("alibi", alibi), ("sinks", sinks), ("causal", causal)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r}, but should be True or False")
        self.rope = rope
        self.window = None if window is None else check_window(window)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal_alignment, self.causal = causal_alignment, causal
        self.scale = self.head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)
        self.softcap = None if softcap is None else float(softcap)
        self.qk_norm = qk_norm
        factory = dict(device=device, dtype=dtype)
        kv_dim = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        # Parameters of the features, None where a feature is off. Each is learned (a gradient flows to it).
        slopes = geometric_slopes(num_heads).to(device=device, dtype=dtype or torch.get_default_dtype())  # (H,)
        self.alibi_slopes = nn.Parameter(slopes) if alibi else None
        self.sinks = nn.Parameter(torch.zeros(num_heads, **factory)) if sinks else None  # (H,): each head's sink logit
        if qk_norm is not None:  # scales start at 1: weight 1, or 0 where the weight is stored as weight - 1 (offset 1)
            q_width, k_width = (self.head_dim, self.head_dim) if qk_norm.over == "head" else (embed_dim, kv_dim)
            start = 1.0 - qk_norm.offset
            self.q_norm = nn.Parameter(torch.full((q_width,), start, **factory))
            self.k_norm = nn.Parameter(torch.full((k_width,), start, **factory))
        else:
            self.q_norm = self.k_norm = None

    def forward(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None, is_causal=False,
                need_weights=False, average_attn_weights=True, positions=None, key_positions=None):
        """(N, L, E) queries, (N, S, E) keys and values (default: the query), or unbatched (L, E):
        returns ``(output like query, weights (N, [H,] L, S) or None)``. With RoPE, ``positions`` and
        ``key_positions`` are the absolute positions of queries and keys (default 0, 1, ...)."""
        key = query if key is None else key
        value = key if value is None else value
        is_causal = is_causal or self.causal
        batched = self._check_inputs(query, key, value)
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)  # (1, ·, E)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)  # (1, S)
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        self._check_masks(key_padding_mask, attn_mask, N, L, S)
        q, k, v = self._project(query, key, value)  # (N, H, L, hd), (N, Hkv, S, hd), (N, Hkv, S, hd)
        if self.rope is not None:
            q, k, v = self._positional(q, k, v, torch.arange(L) if positions is None else positions,
                                       torch.arange(S) if key_positions is None else key_positions)
        k, v = self._expand_kv(k), self._expand_kv(v)  # (N, H, S, hd): query head h reads kv head h // G
        if need_weights:
            mask = self._mask(key_padding_mask, attn_mask, is_causal, N, L, S, q.dtype, q.device)
            heads, weights = self._explicit(q, k, v, mask)  # (N, H, L, hd), (N, H, L, S)
        else:
            heads, weights = self._fast(q, k, v, key_padding_mask, attn_mask, is_causal), None
        merged = heads.transpose(1, 2).reshape(N, L, self.embed_dim)  # (N, L, E): heads side by side
        out = self.o_proj(merged)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else self._per_head(weights)  # (N, [H,] L, S)
        if not batched:
            out = out.squeeze(0)  # (L, E)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    # ------------------------------------------------------------------ decoding with a key/value cache
    def new_cache(self, batch, max_length):
        """An empty cache for a new sequence of at most ``max_length`` tokens."""
        p = self.k_proj.weight
        return KVCache(batch, self.num_kv_heads, max_length, self.head_dim, p.dtype, p.device)

    def decode(self, x, cache, positions, key_padding_mask=None):
        """The next tokens x (N, T, E) at absolute ``positions`` (N, T), after those in ``cache``: output (N, T, E).

        ``key_padding_mask`` (N, cached + T), bool True = padding, covers every token so far."""
        N, T, _ = x.shape
        q, k, v = self._project(x, x, x)  # (N, H, T, hd), (N, Hkv, T, hd), (N, Hkv, T, hd)
        if self.rope is not None:
            q, k, v = self._positional(q, k, v, positions, positions)
        k, v = self._store(cache, k, v)  # (N, Hkv, S, hd): every token so far, S = cached + T
        heads = self._attend_cached(q, self._expand_kv(k), self._expand_kv(v), key_padding_mask)  # (N, H, T, hd)
        return self.o_proj(heads.transpose(1, 2).reshape(N, T, self.embed_dim))  # (N, T, E): heads side by side

    def _store(self, cache, k, v):
        """Append this chunk's keys and values to the cache; return all keys and values so far."""
        return cache.write(cache.length, k, v)

    def _attend_cached(self, q, k, v, key_padding_mask):
        """Queries (N, H, T, hd), the last T of the S keys: causal bottom-right, with the padding."""
        N, _, T, _ = q.shape
        S = k.shape[2]
        hidden = self._positions(T, S, True, q.device, alignment="bottom-right")  # (T, S)
        mask = self._mask(key_padding_mask, None, False, N, T, S, q.dtype, q.device, positions=hidden)
        heads, _ = self._explicit(q, k, v, mask, alignment="bottom-right")
        return heads

    # ------------------------------------------------------------------ rotary positions
    def _positional(self, q, k, v, positions, key_positions):
        """RoPE on queries (N, H, L, hd) and keys (N, Hkv, S, hd); values pass unchanged. ``reached``, the call's
        largest position, is what dynamic NTK scaling rescales by (one base for queries and keys alike)."""
        reached = max((int(torch.as_tensor(p).max()) for p in (positions, key_positions) if torch.as_tensor(p).numel()),
                      default=0)
        return self._rotate(q, positions, reached), self._rotate(k, key_positions, reached), v

    def _frequencies(self, r, reached):
        """The r/2 pair frequencies (float64) and the factor on cos and sin: ``base ** (-2i / r)``, rescaled for long
        contexts as ``rope.scaling`` says (:class:`attnspec.RopeScaling` has the formulas)."""
        scaling, base = self.rope.scaling, self.rope.base
        kind = None if scaling is None else scaling.kind
        if kind == "dynamic" and reached + 1 > scaling.original_max_positions:
            # dynamic NTK: past the trained context the base grows, so that the slowest pair still fits the call
            growth = scaling.factor * (reached + 1) / scaling.original_max_positions - (scaling.factor - 1)
            base = base * growth ** (r / (r - 2))
        pair = torch.arange(r // 2, dtype=torch.float64)  # (r/2,): i
        freq = base ** (-2 * pair / r)  # (r/2,)
        if kind == "linear":  # positions interpolated: every pair turns factor times slower
            return freq / scaling.factor, 1.0
        if kind == "llama3":
            return self._llama3(freq, scaling), 1.0
        if kind == "yarn":
            return self._yarn(freq, r, scaling)
        return freq, 1.0

    @staticmethod
    def _llama3(freq, scaling):
        """Llama 3.1: short wavelengths kept, long ones slowed by ``factor``, the band between blended smoothly."""
        trained = scaling.original_max_positions
        wavelength = 2 * math.pi / freq  # (r/2,)
        slowed = freq / scaling.factor
        # 0 at the long end of the band (wavelength = trained / low_freq_factor), 1 at the short end
        smooth = (trained / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = (1 - smooth) * slowed + smooth * freq
        out = torch.where(wavelength > trained / scaling.low_freq_factor, slowed, blended)
        return torch.where(wavelength < trained / scaling.high_freq_factor, freq, out)

    def _yarn(self, freq, r, scaling):
        """YaRN: fast pairs kept, slow pairs slowed by ``factor``, a linear ramp between, and cos and sin scaled by
        the attention factor (which sharpens the softmax back)."""
        def pair_turning(turns):  # the (fractional) pair that turns ``turns`` times over the trained context
            return r * math.log(scaling.original_max_positions / (turns * 2 * math.pi)) / (2 * math.log(self.rope.base))

        first, last = pair_turning(scaling.beta_fast), pair_turning(scaling.beta_slow)
        if scaling.truncate:  # the ramp's ends at whole pairs (gpt-oss ships truncate=False: fractional ends)
            first, last = math.floor(first), math.ceil(last)
        first, last = max(first, 0), min(last, r - 1)
        span = last - first if last != first else 0.001  # a ramp of one pair would divide by zero
        ramp = ((torch.arange(r // 2, dtype=torch.float64) - first) / span).clamp(0, 1)  # (r/2,): 0 kept, 1 slowed
        freq = freq * (1 - ramp) + freq / scaling.factor * ramp
        factor = scaling.attention_factor
        return freq, (0.1 * math.log(scaling.factor) + 1 if factor is None else factor)

    def _angles(self, positions, r, device, reached=0):
        """cos and sin (1 or N, 1, T, r/2), in float64, of pair i of the r rotated features: pos * f_i, times the
        scaling's attention factor."""
        inv_freq, factor = self._frequencies(r, reached)
        inv_freq = inv_freq.to(device)  # (r/2,)
        pos = torch.as_tensor(positions, device=device).to(torch.float64)
        pos = pos[None, None, :, None] if pos.dim() == 1 else pos[:, None, :, None]  # (1 or N, 1, T, 1)
        angles = pos * inv_freq  # (·, 1, T, r/2)
        return angles.cos() * factor, angles.sin() * factor

    def _rotate(self, x, positions, reached=0):
        """x (N, heads, T, hd) with its leading r features rotated in pairs by position."""
        r = self.rope.rotated(self.head_dim)
        cos, sin = (t.to(x.dtype) for t in self._angles(positions, r, x.device, reached))
        rot, rest = x[..., :r], x[..., r:]
        if self.rope.pairing == "rotate_half":  # feature i pairs with i + r/2
            a, b = rot.chunk(2, dim=-1)  # (N, heads, T, r/2) each
            return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)  # (N, heads, T, hd)
        a, b = rot[..., 0::2], rot[..., 1::2]  # interleaved: features 2i and 2i + 1
        turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)  # (N, heads, T, r)
        return torch.cat([turned, rest], dim=-1)  # (N, heads, T, hd)

    # ------------------------------------------------------------------ steps
    def _project(self, query, key, value):
        """The heads: q (N, H, L, hd), k and v (N, Hkv, S, hd), queries and keys RMS-normalised where declared."""
        N, L, S, hd = query.shape[0], query.shape[1], key.shape[1], self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (N, L, E), (N, S, Ekv), (N, S, Ekv)
        if self.qk_norm is not None and self.qk_norm.over == "all":  # over the whole projection (OLMo-2)
            q, k = self._rms(q, self.q_norm), self._rms(k, self.k_norm)
        q = q.view(N, L, self.num_heads, hd).transpose(1, 2)  # (N, H, L, hd)
        k = k.view(N, S, self.num_kv_heads, hd).transpose(1, 2)  # (N, Hkv, S, hd)
        v = v.view(N, S, self.num_kv_heads, hd).transpose(1, 2)  # (N, Hkv, S, hd)
        if self.qk_norm is not None and self.qk_norm.over == "head":  # each head on its own (Qwen3, Gemma-3)
            q, k = self._rms(q, self.q_norm), self._rms(k, self.k_norm)
        return q, k, v

    def _rms(self, x, weight):
        """x divided by the root mean square of its last axis, then scaled feature by feature (RMSNorm)."""
        norm = self.qk_norm
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + norm.eps) * (norm.offset + weight)

    def _expand_kv(self, x):
        """(N, Hkv, S, hd) -> (N, H, S, hd): each key/value head serves G = H // Hkv consecutive query heads."""
        return x.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)

    def _per_head(self, weights):
        """Per-head weights as returned: one (L, S) map per query head, (N, H, L, S)."""
        return weights

    def _positions(self, L, S, is_causal, device, alignment=None):
        """Keys hidden by position, bool (L, S) with True = hidden, or None."""
        if not is_causal and self.window is None:
            return None
        offset = 0 if (alignment or self.causal_alignment) == "top-left" else S - L
        pos = torch.arange(L, device=device)[:, None] + offset  # (L, 1): each query's key position
        j = torch.arange(S, device=device)[None, :]  # (1, S)
        hidden = torch.zeros(L, S, dtype=torch.bool, device=device)
        if is_causal:
            hidden |= j > pos
        if self.window is not None:
            left, right = self.window
            if left is not None:
                hidden |= j < pos - left
            if right is not None:
                hidden |= j > pos + right
        return hidden

    def _mask(self, key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device, positions=None):
        """Everything that hides keys, as one additive mask broadcastable to (N, H, L, S), or None."""
        # The module under test merges its masks itself, on purpose: attnspec.masks is for adapters.
        parts = []
        positions = self._positions(L, S, is_causal, device) if positions is None else positions
        if positions is not None:
            parts.append(positions)  # (L, S)
        if attn_mask is not None:  # (L, S), or (N*H, L, S) indexed b*H + h
            parts.append(attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(N, self.num_heads, L, S))
        if key_padding_mask is not None:
            parts.append(key_padding_mask.reshape(N, 1, 1, S))  # (N, 1, 1, S)
        if not parts:
            return None
        total = torch.zeros((), dtype=dtype, device=device)
        for m in parts:  # bool: -inf where True; floats are added
            total = total + (torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
                             if m.dtype == torch.bool else m.to(dtype))
        return total

    def _alibi(self, L, S, alignment, dtype, device):
        """ALiBi's penalty (1, H, L, S): ``-slope_h * |pos_i - j|``, query i at key position pos_i (its alignment)."""
        offset = 0 if alignment == "top-left" else S - L
        pos = torch.arange(L, device=device)[:, None] + offset  # (L, 1)
        distance = (pos - torch.arange(S, device=device)[None, :]).abs().to(dtype)  # (L, S)
        return -self.alibi_slopes.to(dtype)[None, :, None, None] * distance  # (1, H, L, S)

    def _scores(self, q, k, alignment):
        """The logits (N, H, L, S) before the masks: scaled, soft-capped, and ALiBi's penalty."""
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (N, H, L, S)
        if self.softcap is not None:  # bounded smoothly to (-softcap, softcap) before the masks (Gemma-2)
            scores = self.softcap * torch.tanh(scores / self.softcap)
        if self.alibi_slopes is not None:
            scores = scores + self._alibi(q.shape[2], k.shape[2], alignment, scores.dtype, scores.device)
        return scores

    def _softmax(self, logits):
        """Weights (N, H, L, S): the softmax of each row; rows that see no key get 0. With sinks, each head's sink
        logit joins the denominator as one more column, which is dropped: it takes weight but holds no value."""
        if self.sinks is not None:
            N, H, L, _ = logits.shape
            sink = self.sinks.to(logits.dtype)[None, :, None, None].expand(N, H, L, 1)  # (N, H, L, 1)
            return torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]  # (N, H, L, S)
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (N, H, L, 1)
        return torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)

    def _explicit(self, q, k, v, mask, alignment=None):
        """Attention output (N, H, L, hd) and weights (N, H, L, S); rows that see no key get weights 0."""
        logits = self._scores(q, k, alignment or self.causal_alignment)  # (N, H, L, S)
        if mask is not None:
            logits = logits + mask
        weights = self._softmax(logits)
        return weights @ v, weights

    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        """Attention output (N, H, L, hd) by SDPA; its own is_causal where nothing else hides keys. A soft cap and
        sinks change the softmax itself, which SDPA cannot: those take the explicit path."""
        N, _, L, _ = q.shape
        S = k.shape[2]
        mask = self._mask(key_padding_mask, attn_mask, is_causal, N, L, S, q.dtype, q.device)
        if self.softcap is not None or self.sinks is not None:
            return self._explicit(q, k, v, mask)[0]
        plain_causal = (is_causal and key_padding_mask is None and attn_mask is None and self.window is None
                        and self.alibi_slopes is None and (self.causal_alignment == "top-left" or L == S))
        if plain_causal and L > 0 and S > 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        if self.alibi_slopes is not None:  # a bias SDPA adds as a float mask
            alibi = self._alibi(L, S, self.causal_alignment, q.dtype, q.device)  # (1, H, L, S)
            mask = alibi if mask is None else mask + alibi
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        mask = mask.expand(N, self.num_heads, L, S)  # (N, H, L, S)
        empty = torch.isneginf(mask).all(dim=-1, keepdim=True)  # rows that see no key: attention 0
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.masked_fill(empty, 0.0), scale=self.scale)
        return heads.masked_fill(empty, 0.0)

    # ------------------------------------------------------------------ validation
    def _check_inputs(self, query, key, value) -> bool:
        if query.dim() not in (2, 3):
            raise ValueError(f"query.dim()={query.dim()}, but should be 3 (N, L, E) or 2 (L, E)")
        for name, t in (("key", key), ("value", value)):
            if t.dim() != query.dim():
                raise ValueError(f"{name}.dim()={t.dim()}, but should equal query.dim()={query.dim()}")
            if t.shape[-1] != self.embed_dim:
                raise ValueError(f"{name}.shape[-1]={t.shape[-1]}, but should be embed_dim={self.embed_dim}")
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query.shape[-1]={query.shape[-1]}, but should be embed_dim={self.embed_dim}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key.shape={tuple(key.shape)} and value.shape={tuple(value.shape)}, but their batch "
                             "and sequence sizes should match")
        if query.dim() == 3 and key.shape[0] != query.shape[0]:
            raise ValueError(f"key batch size {key.shape[0]}, but should equal the query's {query.shape[0]}")
        return query.dim() == 3

    def _check_masks(self, key_padding_mask, attn_mask, N, L, S):
        for name, mask, shapes in (("key_padding_mask", key_padding_mask, [(N, S)]),
                                   ("attn_mask", attn_mask, [(L, S), (N * self.num_heads, L, S)])):
            if mask is None:
                continue
            if mask.dtype != torch.bool and not mask.is_floating_point():
                raise ValueError(f"{name}.dtype={mask.dtype}, but should be torch.bool or a floating dtype")
            if tuple(mask.shape) not in shapes:
                raise ValueError(f"{name}.shape={tuple(mask.shape)}, but should be one of {shapes}")


class ModernAdapter(Adapter):
    """The adapter for :class:`ModernAttention` (or a subclass: the zoo's mutants), declaring the features it is
    built with. ``causality="always"`` builds it with ``causal=True``; ``softmax_scale``/``softcap`` True pass
    the drawn ``Config.softmax_scale``/``Config.softcap`` on; ``alibi``, ``sinks``, ``qk_norm`` switch those on."""

    def __init__(self, name="modern", alignment="top-left", module_class=ModernAttention, rope=None, *,
                 causality="flag", grouping="any", window_kind="any", decoding=True, softmax_scale=False,
                 softcap=False, alibi=False, sinks=False, qk_norm=None):
        self.name, self.alignment, self.module_class, self.rope = name, alignment, module_class, rope
        self.declared = dict(causality=causality, grouping=grouping, window_kind=window_kind, decoding=decoding,
                             softmax_scale=softmax_scale, softcap=softcap, alibi=alibi, sinks=sinks, qk_norm=qk_norm)
        self.always_causal = causality == "always"
        self.alibi, self.sinks, self.qk_norm = alibi, sinks, qk_norm
        self.capabilities = Capabilities(
            kdim_vdim=False, bias_kv=False, zero_attn=False, attention_dropout=False,
            layouts=("batch_first", "unbatched"), causality=causality, causal_alignment=alignment,
            grouping=grouping, window_kind=window_kind, fully_masked_rows="zeros", rope=rope, decoding=decoding,
            takes_softmax_scale=softmax_scale, takes_softcap=softcap, alibi=alibi, attention_sinks=sinks,
            qk_norm=qk_norm)

    def variant(self, name, module_class):
        """An adapter declaring the same for another module class (a mutant of this variant, in the zoo)."""
        return ModernAdapter(name, self.alignment, module_class, self.rope, **self.declared)

    def build(self, config, *, dtype, device):
        module = self.module_class(config.embed_dim, config.num_heads, num_kv_heads=config.num_kv_heads,
                                   window=config.window, causal_alignment=self.alignment, bias=config.bias,
                                   rope=self.rope, softmax_scale=config.softmax_scale, softcap=config.softcap,
                                   alibi=self.alibi, sinks=self.sinks, qk_norm=self.qk_norm,
                                   causal=self.always_causal)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=False, positions=None, key_positions=None):
        return module(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                      is_causal=is_causal, need_weights=need_weights, average_attn_weights=average_attn_weights,
                      positions=positions, key_positions=key_positions)

    def new_cache(self, module, batch_size, max_length):
        return module.new_cache(batch_size, max_length)

    def decode(self, module, cache, x, *, positions, key_padding_mask=None):
        return module.decode(x, cache, positions, key_padding_mask), cache

    def get_weights(self, m):
        # Wk, Wv: (Hkv * hd, E); the features' parameters pass through (None where off)
        return from_linears(m.q_proj, m.k_proj, m.v_proj, m.o_proj, q_norm=m.q_norm, k_norm=m.k_norm,
                            alibi_slopes=m.alibi_slopes, sinks=m.sinks)

    def set_weights(self, m, w):
        to_linears(w, m.q_proj, m.k_proj, m.v_proj, m.o_proj)
        for name in ("q_norm", "k_norm", "alibi_slopes", "sinks"):
            if getattr(m, name) is not None:
                copy_(getattr(m, name), getattr(w, name))


# The variants, each modelled on a released model's attention. Sizes, window lengths, scales and caps are drawn by
# the suite; the declarations below are what each model fixes.
TOP_LEFT = ModernAdapter("modern", "top-left")
BOTTOM_RIGHT = ModernAdapter("modern.bottom_right", "bottom-right")
ROPE = ModernAdapter("modern.rope", "bottom-right", rope=Rope("rotate_half", 10000.0))  # a Llama-style decoder
ROPE_INTERLEAVED = ModernAdapter("modern.rope_interleaved", "bottom-right", rope=Rope("interleaved", 500.0, 0.5))
# Gemma-2: built causal, a look-back window, query_pre_attn_scalar ** -0.5 as the scale, logits capped by tanh
GEMMA2 = ModernAdapter("modern.gemma2", "bottom-right", rope=Rope("rotate_half", 10000.0), causality="always",
                       window_kind="left", softmax_scale=True, softcap=True)
# gpt-oss: a learned sink logit per head, grouped heads, a look-back window (its YaRN RoPE: modern.yarn)
GPT_OSS = ModernAdapter("modern.gpt_oss", "bottom-right", window_kind="left", sinks=True)
# Qwen3: RMSNorm of each query and key head before RoPE (base 1e6)
QWEN3 = ModernAdapter("modern.qwen3", "bottom-right", rope=Rope("rotate_half", 1e6), qk_norm=QKNorm("head", 1e-6))
# OLMo-2: RMSNorm of the whole query and key projections, before the head split
OLMO2 = ModernAdapter("modern.olmo2", "bottom-right", rope=Rope("rotate_half", 500000.0), qk_norm=QKNorm("all", 1e-6))
# MPT: ALiBi instead of RoPE, built causal, as many key/value heads as query heads, no window
MPT = ModernAdapter("modern.mpt", "bottom-right", causality="always", grouping="none", window_kind=None, alibi=True)
# Llama 3.1: RoPE base 500000 with its llama3 frequency rescaling (factor 8 over a trained context of 8192)
LLAMA31 = ModernAdapter("modern.llama31", "bottom-right",
                        rope=Rope("rotate_half", 500000.0, scaling=RopeScaling("llama3", 8.0, 8192, 1.0, 4.0)))
# YaRN as Qwen2.5 extends its context: factor 4 over 32768 trained positions, base 1e6
YARN = ModernAdapter("modern.yarn", "bottom-right", rope=Rope("rotate_half", 1e6, scaling=RopeScaling("yarn", 4.0, 32768)))
# dynamic NTK over a trained context shrunk to 16 positions, so that the drawn calls pass it; the base grows with
# each call's length, so decoding token by token differs from one call (not claimed)
DYNAMIC_NTK = ModernAdapter("modern.dynamic_ntk", "bottom-right", decoding=False,
                            rope=Rope("rotate_half", 10000.0, scaling=RopeScaling("dynamic", 2.0, 16)))
# linear position interpolation (LongChat, Vicuna-16k): every pair turns 4 times slower
LINEAR_ROPE = ModernAdapter("modern.linear_rope", "bottom-right",
                            rope=Rope("rotate_half", 10000.0, scaling=RopeScaling("linear", 4.0)))
# Falcon-7B, PaLM: multi-query attention, one key/value head whatever the number of query heads
MQA = ModernAdapter("modern.mqa", "bottom-right", rope=Rope("rotate_half", 10000.0), grouping="multi-query")
# Certified in the default run, one variant per feature (each costs it several seconds); ROPE_INTERLEAVED is
# certified with the decoder zoo, QWEN3, OLMO2, YARN, DYNAMIC_NTK, LINEAR_ROPE and MQA with the features zoo
# (pytest --zoo, tests/zoo/).
ADAPTERS = [TOP_LEFT, BOTTOM_RIGHT, ROPE, GEMMA2, GPT_OSS, MPT, LLAMA31]
for _name, _adapter in list(globals().items()):  # where each lives, for a failure's repro line
    if isinstance(_adapter, ModernAdapter):
        _adapter.origin = f"attnspec.impls.modern_attention:{_name}"
