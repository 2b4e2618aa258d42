"""The zoo beyond ``nn.MultiheadAttention``: mutants of the causal flag, grouped-query heads and windows.

Every mutant subclasses :class:`attnspec.impls.modern_attention.ModernAttention` (a causal flag of
either alignment, ``num_kv_heads``, a sliding window, masks) and overrides one step with one
realistic bug; the comment above each class names the bug and the configurations that hide it.
``FEATURE_MUTANTS`` pairs each with the alignment its adapter declares; ``feature_adapter`` builds it.
Shapes: N batch, H heads, Hkv key/value heads, G = H // Hkv, L queries, S keys.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from attnspec.impls.modern_attention import ModernAdapter, ModernAttention

BOTTOM_RIGHT = "bottom-right"


# ============================================================== grouped-query attention

# kv heads expanded with repeat (query head h reads kv head h % Hkv) instead of repeat_interleave; hidden when num_kv_heads is 1 or num_heads (H < 4)
class KvHeadsRepeatedNotInterleaved(ModernAttention):
    def _expand_kv(self, x):
        return x.repeat(1, self.num_heads // self.num_kv_heads, 1, 1)  # (N, H, S, hd), heads in the wrong order


# per-head weights returned per key/value head (averaged over each group); hidden when num_kv_heads == num_heads or weights are averaged
class PerHeadWeightsPerKvHead(ModernAttention):
    def _per_head(self, weights):
        N, H, L, S = weights.shape
        return weights.view(N, self.num_kv_heads, H // self.num_kv_heads, L, S).mean(2)  # (N, Hkv, L, S)


# ============================================================== causal flag

# the causal flag ignored on the SDPA path (need_weights=False): the future leaks there; hidden when every test asks for weights
class CausalFlagIgnoredOnFastPath(ModernAttention):
    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        return super()._fast(q, k, v, key_padding_mask, attn_mask, False)


# top-left causal diagonal (SDPA's) where bottom-right is declared (FlashAttention's); hidden when L == S (every self-attention test)
class TopLeftWhereBottomRightDeclared(ModernAttention):
    def _positions(self, L, S, is_causal, device):
        saved, self.causal_alignment = self.causal_alignment, "top-left"
        try:
            return super()._positions(L, S, is_causal, device)
        finally:
            self.causal_alignment = saved


# the causal flag replaces an explicit attn_mask given alongside it instead of merging with it; hidden when the flag comes alone or the mask is causal anyway
class CausalFlagDropsAttnMask(ModernAttention):
    def _mask(self, key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device):
        return super()._mask(key_padding_mask, None if is_causal else attn_mask, is_causal, N, L, S, dtype, device)


# with the causal flag and no attn_mask, SDPA's is_causal is called and the key_padding_mask dropped; hidden without padding or with need_weights=True
class CausalFlagDropsPaddingOnFastPath(ModernAttention):
    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        if is_causal and attn_mask is None and self.window is None and self.causal_alignment == "top-left":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return super()._fast(q, k, v, key_padding_mask, attn_mask, is_causal)


# ============================================================== sliding windows

# window off by one at the left edge: query at pos also sees key pos - left - 1; hidden when the left side is unbounded or sequences are shorter than the window
class WindowLeftEdgeOffByOne(ModernAttention):
    def _positions(self, L, S, is_causal, device):
        hidden = super()._positions(L, S, is_causal, device)
        if hidden is None or self.window is None or self.window[0] is None:
            return hidden
        offset = 0 if self.causal_alignment == "top-left" else S - L
        edge = (torch.arange(S, device=device)[None, :] ==
                torch.arange(L, device=device)[:, None] + offset - self.window[0] - 1)  # (L, S)
        return hidden & ~edge


# window off by one at the right edge: key pos + right is hidden too (the diagonal, with right = 0); hidden when the right side is unbounded
class WindowRightEdgeOffByOne(ModernAttention):
    def _positions(self, L, S, is_causal, device):
        hidden = super()._positions(L, S, is_causal, device)
        if hidden is None or self.window is None or self.window[1] is None:
            return hidden
        offset = 0 if self.causal_alignment == "top-left" else S - L
        edge = (torch.arange(S, device=device)[None, :] ==
                torch.arange(L, device=device)[:, None] + offset + self.window[1])  # (L, S)
        return hidden | edge


# window applied from the key's side (queries within left/right of each key), which swaps the two extents; hidden when the window is symmetric
class WindowOnQuerySide(ModernAttention):
    def _positions(self, L, S, is_causal, device):
        saved = self.window
        self.window = None if saved is None else (saved[1], saved[0])
        try:
            return super()._positions(L, S, is_causal, device)
        finally:
            self.window = saved


# any window also makes the module causal (a Mistral-style window assumed to be a decoder's); hidden when every test is causal
class WindowImpliesCausal(ModernAttention):
    def _positions(self, L, S, is_causal, device):
        return super()._positions(L, S, is_causal or self.window is not None, device)


# the window dropped whenever a mask is given (only the no-mask path builds it); hidden without masks
class WindowDroppedWithMasks(ModernAttention):
    def _mask(self, key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device):
        if key_padding_mask is None and attn_mask is None:
            return super()._mask(key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device)
        saved, self.window = self.window, None
        try:
            return super()._mask(key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device)
        finally:
            self.window = saved


# ============================================================== registry

FEATURE_MUTANTS: list[tuple[str, type]] = [  # every ModernAttention subclass defined above, in order
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, ModernAttention) and obj is not ModernAttention
]


# ============================================================== equivalents (must be accepted)

class ModernAttentionBottomRight(ModernAttention):
    """Equivalent: the bundled module itself, certified with the bottom-right alignment it is built with."""


class KvExpandedByIndexing(ModernAttention):
    """Equivalent: key/value heads expanded by indexing kv head h // G for each query head h."""

    def _expand_kv(self, x):
        G = self.num_heads // self.num_kv_heads
        return x[:, torch.arange(self.num_heads, device=x.device) // G]  # (N, H, S, hd)


class BottomRightViaCausalLowerRight(ModernAttention):
    """Equivalent: bottom-right causality on the SDPA path through torch.nn.attention.bias.causal_lower_right."""

    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        L, S = q.shape[2], k.shape[2]
        if is_causal and key_padding_mask is None and attn_mask is None and self.window is None and 0 < L <= S:
            from torch.nn.attention.bias import causal_lower_right
            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(L, S))
        return super()._fast(q, k, v, key_padding_mask, attn_mask, is_causal)


FEATURE_CORRECT: list[tuple[str, type]] = [("ModernAttention", ModernAttention)] + [
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, ModernAttention) and obj is not ModernAttention
    and name not in dict(FEATURE_MUTANTS)
]

ALIGNMENT = {"TopLeftWhereBottomRightDeclared": BOTTOM_RIGHT, "ModernAttentionBottomRight": BOTTOM_RIGHT,
             "BottomRightViaCausalLowerRight": BOTTOM_RIGHT}


def feature_adapter(name: str, cls: type = ModernAttention, alignment: str | None = None) -> ModernAdapter:
    """The adapter certifying ``cls`` (a mutant, or the correct module) under the name ``name``."""
    return ModernAdapter(name, alignment or ALIGNMENT.get(name, "top-left"), module_class=cls)


def alignment_of(name: str) -> str:
    return ALIGNMENT.get(name, "top-left")
