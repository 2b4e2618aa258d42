"""The decoder zoo: mutants of rotary positions (RoPE) and of incremental decoding with a key/value cache.

Every mutant subclasses :class:`attnspec.impls.modern_attention.ModernAttention` built with RoPE (declared
by its adapter, :data:`ROPE_OF`) and a preallocated cache, and overrides one step with one realistic bug;
the comment above each class names the bug and the configurations that hide it. ``decoding_adapter``
builds the adapter. Shapes: N batch, H heads, Hkv key/value heads, T new tokens, S cached + new keys,
hd head width, r rotated features.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

from attnspec import Rope
from attnspec.impls.modern_attention import KVCache, ModernAdapter, ModernAttention

HALF = Rope("rotate_half", 10000.0)
HALF_PARTIAL = Rope("rotate_half", 10000.0, 0.5)
INTERLEAVED = Rope("interleaved", 10000.0)


class _DecoderBase(ModernAttention):
    """Not certified: the common parent, so that the registry below lists only the mutants."""


# ============================================================== rotary positions

# interleaved pairs (2i, 2i+1) where rotate_half (i, i + r/2) is declared (the porting bug); hidden when a head rotates 2 features or positions are 0
class RopePairingSwapped(_DecoderBase):
    def _rotate(self, x, positions, reached=0):
        saved, self.rope = self.rope, dataclasses.replace(self.rope, pairing="interleaved")
        try:
            return super()._rotate(x, positions, reached)
        finally:
            self.rope = saved


# frequency base 1000 where 10000 is declared; hidden when a head rotates only 2 features (pair 0 turns at frequency 1 whatever the base) or every position is 0
class RopeBaseWrong(_DecoderBase):
    def _rotate(self, x, positions, reached=0):
        saved, self.rope = self.rope, dataclasses.replace(self.rope, base=1000.0)
        try:
            return super()._rotate(x, positions, reached)
        finally:
            self.rope = saved


# the trailing r features rotated where the leading fraction is declared (partial rotary); hidden when the whole head is rotated (fraction 1)
class RopeRotatesTrailingFeatures(_DecoderBase):
    def _rotate(self, x, positions, reached=0):
        r = self.rope.rotated(self.head_dim)
        turned = super()._rotate(torch.cat([x[..., -r:], x[..., :-r]], dim=-1), positions, reached)  # trailing r first
        return torch.cat([turned[..., r:], turned[..., :r]], dim=-1)  # (N, heads, T, hd): back in place


# values rotated too (RoPE applied to q, k and v alike); hidden when every position is 0
class RopeOnValues(_DecoderBase):
    def _positional(self, q, k, v, positions, key_positions):
        return self._rotate(q, positions), self._rotate(k, key_positions), self._rotate(v, key_positions)


# cos/sin tables precomputed for 32 positions, later positions wrap around (index % 32); hidden while every position is below 32
class RopeTableTooShort(_DecoderBase):
    def _rotate(self, x, positions, reached=0):
        return super()._rotate(x, torch.as_tensor(positions) % 32, reached)


# the positions given are ignored: the module counts 0, 1, ... itself on every call; hidden when positions start at 0
class PositionsIgnored(_DecoderBase):
    def forward(self, query, key=None, value=None, *, positions=None, key_positions=None, **kwargs):
        return super().forward(query, key, value, **kwargs)


# ============================================================== decoding with a cache

# positions restart at 0 on every decoding step (arange(T) for each chunk); hidden when the whole sequence is one prefill from position 0
class PositionsRestartEachStep(_DecoderBase):
    def decode(self, x, cache, positions, key_padding_mask=None):
        return super().decode(x, cache, positions - positions[:, :1], key_padding_mask)


# the new tokens written at length - 1, an off-by-one in the cache position that overwrites the last cached token; hidden when the whole sequence is one prefill
class CachePositionOffByOne(_DecoderBase):
    def _store(self, cache, k, v):
        return cache.write(max(cache.length - 1, 0), k, v)


# the cache allocated once and handed out again for the next sequence with its length left as it was; hidden when each module decodes one sequence
class CacheNotReset(_DecoderBase):
    def new_cache(self, batch, max_length):
        if getattr(self, "_cache", None) is None:
            self._cache = KVCache(batch, self.num_kv_heads, 4 * max_length, self.head_dim,
                                  self.k_proj.weight.dtype, self.k_proj.weight.device)
        return self._cache


# the chunk's keys and values appended twice (written to the cache, then concatenated again); hidden when never decoding through the cache
class KeysAppendedTwice(_DecoderBase):
    def _store(self, cache, k, v):
        keys, values = super()._store(cache, k, v)
        return torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)  # (N, Hkv, S + T, hd)


# SDPA's is_causal (top-left) for chunks of more than one token, no mask for one; hidden when decoding one token at a time after a prefill from an empty cache
class TopLeftCausalInChunks(_DecoderBase):
    def _attend_cached(self, q, k, v, key_padding_mask):
        T, S = q.shape[2], k.shape[2]
        hidden = self._positions(T, S, True, q.device, alignment="bottom-right")  # (T, S): the window, rightly
        if T > 1:  # SDPA's is_causal=T > 1: top-left, query t sees keys 0..t only
            hidden = hidden | self._positions(T, S, True, q.device, alignment="top-left")
        mask = self._mask(key_padding_mask, None, False, q.shape[0], T, S, q.dtype, q.device, positions=hidden)
        return self._explicit(q, k, v, mask)[0]


# ============================================================== registry

DECODING_MUTANTS: list[tuple[str, type]] = [  # every _DecoderBase subclass defined above, in order
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, _DecoderBase) and obj is not _DecoderBase
]


# ============================================================== equivalents (must be accepted)

class DecoderAttention(ModernAttention):
    """Equivalent: the bundled module itself, with rotate_half RoPE (base 10000) and its cache."""


class DecoderInterleavedPartial(ModernAttention):
    """Equivalent: the bundled module with interleaved RoPE on the leading half of each head."""


class RopeByComplexMultiplication(ModernAttention):
    """Equivalent: interleaved RoPE as Meta's Llama writes it, pairs as complex numbers times e^(i * angle)."""

    def _rotate(self, x, positions, reached=0):
        r = self.rope.rotated(self.head_dim)
        cos, sin = self._angles(positions, r, x.device, reached)  # (·, 1, T, r/2), float64
        pairs = torch.view_as_complex(x[..., :r].double().reshape(*x.shape[:-1], r // 2, 2).contiguous())  # (.., r/2)
        turned = torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).to(x.dtype)  # (N, heads, T, r)
        return torch.cat([turned, x[..., r:]], dim=-1)  # (N, heads, T, hd)


class GrowingCache:
    """A cache of tensors concatenated as tokens arrive (HF's DynamicCache), not preallocated."""

    def __init__(self):
        self.keys = self.values = None
        self.length = 0

    def write(self, start, k, v):
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=2)  # (N, Hkv, S, hd)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=2)
        self.length = self.keys.shape[2]
        return self.keys, self.values


class DecoderWithGrowingCache(ModernAttention):
    """Equivalent: the cache grows by concatenation instead of being preallocated."""

    def new_cache(self, batch, max_length):
        return GrowingCache()


DECODING_CORRECT: list[tuple[str, type]] = [
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, ModernAttention) and obj is not ModernAttention
    and name not in dict(DECODING_MUTANTS) and obj is not _DecoderBase
]

ROPE_OF = {"RopeRotatesTrailingFeatures": HALF_PARTIAL, "DecoderInterleavedPartial": Rope("interleaved", 500.0, 0.5),
           "RopeByComplexMultiplication": INTERLEAVED}


def rope_of(name: str) -> Rope:
    return ROPE_OF.get(name, HALF)


def decoding_adapter(name: str, cls: type = DecoderAttention) -> ModernAdapter:
    """The adapter certifying ``cls`` (a mutant, or a correct module) under ``name``: bottom-right, RoPE, a cache."""
    return ModernAdapter(name, "bottom-right", module_class=cls, rope=rope_of(name))
