"""Attention as it is written today: a causal flag, grouped-query heads, a sliding window, masks.

``ModernAttention`` takes all of them at once, batch-first (or unbatched), with separate
``q_proj``/``k_proj``/``v_proj``/``o_proj`` projections (the Llama naming):

* ``is_causal=True`` hides the future. ``causal_alignment`` places the diagonal when L != S:
  ``"top-left"`` (query i sees keys 0..i, as SDPA's ``is_causal``) or ``"bottom-right"`` (query i
  sees keys 0..i + S - L, as FlashAttention's ``causal``: the last query sees every key).
* ``num_kv_heads`` key/value heads (a divisor of ``num_heads``; 1 is multi-query attention):
  query head h reads key/value head ``h // (num_heads // num_kv_heads)``, i.e. the key/value
  heads are expanded with ``repeat_interleave``.
* ``window=(left, right)``: query i (at key position pos, placed as the diagonal is) sees keys
  ``pos - left`` to ``pos + right``; either side may be None (unbounded).
* ``key_padding_mask`` (N, S) and ``attn_mask`` (L, S) or (N*H, L, S), in
  ``nn.MultiheadAttention``'s polarity (bool True = masked, floats added); all of the above
  combine, as masks add.

* ``rope`` (an :class:`attnspec.Rope`): rotary position embeddings on queries and keys, per head, before
  scaling; ``forward`` then takes ``positions`` (L,) or (N, L) and ``key_positions`` (S,) or (N, S),
  absolute int positions (default 0, 1, ...).
* a key/value cache for incremental decoding: ``cache = module.new_cache(N, max_length)``, then
  ``module.decode(x, cache, positions)`` for the prefill and every further chunk of tokens (N, T, E);
  each token sees the cached ones and those before it in its chunk (bottom-right causality).

A query row that sees no key gets attention 0 (its output is ``o_proj.bias``). Two paths:
with ``need_weights=True`` the weights are computed explicitly and returned; without, the
attention runs in ``F.scaled_dot_product_attention`` (with its own ``is_causal`` where that is
all there is). Names: N batch, L queries, S keys, E embed_dim, H heads, Hkv key/value heads,
hd = E // H.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, Rope, from_linears, to_linears
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


class ModernAttention(nn.Module):
    """Correct: a causal flag of either alignment, grouped-query heads, a sliding window and masks, at once."""

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, window=None, causal_alignment="top-left",
                 bias=True, rope=None, device=None, dtype=None):
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
                             f"head_dim={embed_dim // num_heads}, but should rotate an even number, at least 2")
        self.rope = rope
        self.window = None if window is None else check_window(window)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal_alignment = causal_alignment
        factory = dict(device=device, dtype=dtype)
        kv_dim = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None, is_causal=False,
                need_weights=False, average_attn_weights=True, positions=None, key_positions=None):
        """(N, L, E) queries, (N, S, E) keys and values (default: the query), or unbatched (L, E):
        returns ``(output like query, weights (N, [H,] L, S) or None)``. With RoPE, ``positions`` and
        ``key_positions`` are the absolute positions of queries and keys (default 0, 1, ...)."""
        key = query if key is None else key
        value = key if value is None else value
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
        heads, _ = self._explicit(q, k, v, mask)
        return heads

    # ------------------------------------------------------------------ rotary positions
    def _positional(self, q, k, v, positions, key_positions):
        """RoPE on queries (N, H, L, hd) and keys (N, Hkv, S, hd); values pass unchanged."""
        return self._rotate(q, positions), self._rotate(k, key_positions), v

    def _angles(self, positions, r, device):
        """cos and sin (1 or N, 1, T, r/2), in float64, of pair i of the r rotated features: pos * base^(-2i/r)."""
        inv_freq = self.rope.base ** (-torch.arange(0, r, 2, dtype=torch.float64, device=device) / r)  # (r/2,)
        pos = torch.as_tensor(positions, device=device).to(torch.float64)
        pos = pos[None, None, :, None] if pos.dim() == 1 else pos[:, None, :, None]  # (1 or N, 1, T, 1)
        angles = pos * inv_freq  # (·, 1, T, r/2)
        return angles.cos(), angles.sin()

    def _rotate(self, x, positions):
        """x (N, heads, T, hd) with its leading r features rotated in pairs by position."""
        r = self.rope.rotated(self.head_dim)
        cos, sin = (t.to(x.dtype) for t in self._angles(positions, r, x.device))
        rot, rest = x[..., :r], x[..., r:]
        if self.rope.pairing == "rotate_half":  # feature i pairs with i + r/2
            a, b = rot.chunk(2, dim=-1)  # (N, heads, T, r/2) each
            return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)  # (N, heads, T, hd)
        a, b = rot[..., 0::2], rot[..., 1::2]  # interleaved: features 2i and 2i + 1
        turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)  # (N, heads, T, r)
        return torch.cat([turned, rest], dim=-1)  # (N, heads, T, hd)

    # ------------------------------------------------------------------ steps
    def _project(self, query, key, value):
        N, L, S, hd = query.shape[0], query.shape[1], key.shape[1], self.head_dim
        q = self.q_proj(query).view(N, L, self.num_heads, hd).transpose(1, 2)  # (N, H, L, hd)
        k = self.k_proj(key).view(N, S, self.num_kv_heads, hd).transpose(1, 2)  # (N, Hkv, S, hd)
        v = self.v_proj(value).view(N, S, self.num_kv_heads, hd).transpose(1, 2)  # (N, Hkv, S, hd)
        return q, k, v

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

    def _explicit(self, q, k, v, mask):
        """Attention output (N, H, L, hd) and weights (N, H, L, S); rows that see no key get weights 0."""
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (N, H, L, S)
        if mask is not None:
            logits = logits + mask
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (N, H, L, 1)
        weights = torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        return weights @ v, weights

    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        """Attention output (N, H, L, hd) by SDPA; its own is_causal where nothing else hides keys."""
        N, _, L, _ = q.shape
        S = k.shape[2]
        plain_causal = (is_causal and key_padding_mask is None and attn_mask is None and self.window is None
                        and (self.causal_alignment == "top-left" or L == S))
        if plain_causal and L > 0 and S > 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = self._mask(key_padding_mask, attn_mask, is_causal, N, L, S, q.dtype, q.device)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v)
        mask = mask.expand(N, self.num_heads, L, S)  # (N, H, L, S)
        empty = torch.isneginf(mask).all(dim=-1, keepdim=True)  # rows that see no key: attention 0
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.masked_fill(empty, 0.0))
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


def capabilities(alignment: str, rope: Rope | None = None) -> Capabilities:
    return Capabilities(
        kdim_vdim=False, bias_kv=False, zero_attn=False, attention_dropout=False,
        layouts=("batch_first", "unbatched"), causality="flag", causal_alignment=alignment,
        grouping="any", window_kind="any", fully_masked_rows="zeros", rope=rope, decoding=True)


class ModernAdapter(Adapter):
    """The adapter for :class:`ModernAttention` (or a subclass: the zoo's mutants)."""

    def __init__(self, name="modern", alignment="top-left", module_class=ModernAttention, rope=None):
        self.name, self.alignment, self.module_class, self.rope = name, alignment, module_class, rope
        self.capabilities = capabilities(alignment, rope)

    def build(self, config, *, dtype, device):
        module = self.module_class(config.embed_dim, config.num_heads, num_kv_heads=config.num_kv_heads,
                                   window=config.window, causal_alignment=self.alignment, bias=config.bias,
                                   rope=self.rope)
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
        return from_linears(m.q_proj, m.k_proj, m.v_proj, m.o_proj)  # Wk, Wv: (Hkv * hd, E)

    def set_weights(self, m, w):
        to_linears(w, m.q_proj, m.k_proj, m.v_proj, m.o_proj)


TOP_LEFT = ModernAdapter("modern", "top-left")
BOTTOM_RIGHT = ModernAdapter("modern.bottom_right", "bottom-right")
ROPE = ModernAdapter("modern.rope", "bottom-right", rope=Rope("rotate_half", 10000.0))  # a Llama-style decoder
ROPE_INTERLEAVED = ModernAdapter("modern.rope_interleaved", "bottom-right", rope=Rope("interleaved", 500.0, 0.5))
ADAPTERS = [TOP_LEFT, BOTTOM_RIGHT, ROPE, ROPE_INTERLEAVED]
