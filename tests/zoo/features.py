"""The zoo beyond ``nn.MultiheadAttention``: mutants of the causal flag, grouped-query heads, windows, and the
logit and position features of 2024-25 decoders (softmax scale, soft cap, ALiBi, sinks, QK-norm, RoPE scaling,
partial RoPE).

Every mutant subclasses :class:`attnspec.impls.modern_attention.ModernAttention` (a causal flag of
either alignment, ``num_kv_heads``, a sliding window, masks, and the features) and overrides one step with one
realistic bug; the comment above each class names the bug and the configurations that hide it.
``feature_adapter`` builds the adapter that certifies it: the one of the bundled variant it is a mutant of
(:data:`VARIANT_OF`: ``modern.gemma2`` for a soft-cap bug, ...), else plain ``modern`` of the alignment in
:data:`ALIGNMENT`. :data:`NAMED_BY` gives, for the feature mutants, the law that names the bug.
Shapes: N batch, H heads, Hkv key/value heads, G = H // Hkv, L queries, S keys, r rotated features.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F

from attnspec import Rope
from attnspec.impls import modern_attention as bundled
from attnspec.impls.modern_attention import ModernAdapter, ModernAttention

BOTTOM_RIGHT = "bottom-right"
# GPT-NeoX and Pythia: a quarter of each head rotated (rotary_pct 0.25). Certified here only: its heads are wide.
NEOX = ModernAdapter("modern.neox", BOTTOM_RIGHT, rope=Rope("rotate_half", 10000.0, 0.25), grouping="none")


@contextlib.contextmanager
def patched(module, name, value):
    """Within the block, ``module.<name>`` is ``value`` (a parameter may be patched to None): the setting a mutant
    forgets on one of its paths."""
    table = module._parameters if name in module._parameters else None
    saved = table[name] if table is not None else getattr(module, name)
    if table is not None:
        table[name] = value
    else:
        setattr(module, name, value)
    try:
        yield
    finally:
        if table is not None:
            table[name] = saved
        else:
            setattr(module, name, saved)


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


# ============================================================== the logits: softmax scale and soft cap (modern.gemma2)

# the soft cap applied after the masks: tanh lifts a masked key from -inf to -softcap; hidden without a cap, or where no key is masked
class SoftcapAfterMask(ModernAttention):
    def _explicit(self, q, k, v, mask, alignment=None):
        with patched(self, "softcap", None):
            logits = self._scores(q, k, alignment or self.causal_alignment)  # (N, H, L, S), not capped yet
        if mask is not None:
            logits = logits + mask
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)  # -inf -> -softcap: the masked key is back
        weights = self._softmax(logits)
        return weights @ v, weights


# the soft cap dropped on the SDPA path (need_weights=False), as attention kernels without a softcap argument drop it; hidden when weights are always asked for
class SoftcapIgnoredOnFastPath(ModernAttention):
    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        with patched(self, "softcap", None):
            return super()._fast(q, k, v, key_padding_mask, attn_mask, is_causal)


# softmax_scale not passed to SDPA, which scales by its default head_dim ** -0.5; hidden when weights are always asked for
class SoftmaxScaleIgnoredOnFastPath(ModernAttention):
    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        with patched(self, "scale", self.head_dim ** -0.5):
            return super()._fast(q, k, v, key_padding_mask, attn_mask, is_causal)


# ============================================================== ALiBi (modern.mpt)

# ALiBi distances measured from query i at key position i (top-left) where bottom-right is declared; hidden when L == S (every self-attention test)
class AlibiTopLeftWhereBottomRightDeclared(ModernAttention):
    def _alibi(self, L, S, alignment, dtype, device):
        return super()._alibi(L, S, "top-left", dtype, device)


# ALiBi's penalty with the wrong sign (slopes stored negative, then subtracted): distant keys favoured; hidden in sequences of one key
class AlibiWrongSign(ModernAttention):
    def _alibi(self, L, S, alignment, dtype, device):
        return -super()._alibi(L, S, alignment, dtype, device)


# ============================================================== attention sinks (modern.gpt_oss)

# the sinks dropped on the SDPA path (need_weights=False), as a kernel without a sink argument drops them; hidden when weights are always asked for
class SinksIgnoredOnFastPath(ModernAttention):
    def _fast(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        with patched(self, "sinks", None):
            return super()._fast(q, k, v, key_padding_mask, attn_mask, is_causal)


# the weights renormalised to sum to one once the sink's column is dropped, which undoes the sink; hidden when the sink logits are far below the rest
class SinkWeightsRenormalised(ModernAttention):
    def _softmax(self, logits):
        weights = super()._softmax(logits)  # (N, H, L, S), rows summing to less than one
        return weights if self.sinks is None else weights / weights.sum(dim=-1, keepdim=True)


# ============================================================== QK-norm (modern.qwen3)

# QK-norm applied after RoPE instead of before it (rotation and per-feature weights do not commute); hidden at position 0 or with equal norm weights
class QkNormAfterRope(ModernAttention):
    def _project(self, query, key, value):
        with patched(self, "qk_norm", None):
            return super()._project(query, key, value)

    def _positional(self, q, k, v, positions, key_positions):
        q, k, v = super()._positional(q, k, v, positions, key_positions)
        return self._rms(q, self.q_norm), self._rms(k, self.k_norm), v


# a per-head QK-norm's mean square taken over all heads of a token (the whole projection); hidden with one head and one key/value head
class QkNormOverAllHeads(ModernAttention):
    def _rms(self, x, weight):  # x (N, heads, T, hd)
        norm = self.qk_norm
        return x * torch.rsqrt(x.pow(2).mean(dim=(1, -1), keepdim=True) + norm.eps) * (norm.offset + weight)


# ============================================================== RoPE scaling

# Llama 3.1's band between short and long wavelengths blended the wrong way round; hidden when no pair's wavelength is in the band, or at position 0
class Llama3BlendReversed(ModernAttention):
    @staticmethod
    def _llama3(freq, scaling):
        trained = scaling.original_max_positions
        wavelength = 2 * math.pi / freq  # (r/2,)
        slowed = freq / scaling.factor
        smooth = (trained / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = smooth * slowed + (1 - smooth) * freq  # reversed: (1 - smooth) belongs to the slowed frequency
        out = torch.where(wavelength > trained / scaling.low_freq_factor, slowed, blended)
        return torch.where(wavelength < trained / scaling.high_freq_factor, freq, out)


# YaRN's frequencies without its attention factor on cos and sin (0.1 ln(factor) + 1): logits off by its square; hidden only where it is 1
class YarnWithoutAttentionFactor(ModernAttention):
    def _yarn(self, freq, r, scaling):
        return super()._yarn(freq, r, scaling)[0], 1.0


# linear position interpolation applied to the keys only, the queries turning at the unscaled frequencies; hidden when every position is 0
class LinearScalingOnKeysOnly(ModernAttention):
    def _positional(self, q, k, v, positions, key_positions):
        _, k, v = super()._positional(q, k, v, positions, key_positions)
        with patched(self, "rope", dataclasses.replace(self.rope, scaling=None)):
            return self._rotate(q, positions), k, v


# dynamic NTK's base grown by the context ratio itself, without the exponent r / (r - 2); hidden while every call stays within the trained context
class DynamicNtkWithoutExponent(ModernAttention):
    def _frequencies(self, r, reached):
        scaling = self.rope.scaling
        if reached + 1 <= scaling.original_max_positions:
            return super()._frequencies(r, reached)
        growth = scaling.factor * (reached + 1) / scaling.original_max_positions - (scaling.factor - 1)
        with patched(self, "rope", dataclasses.replace(self.rope, base=self.rope.base * growth, scaling=None)):
            return super()._frequencies(r, reached)


# ============================================================== partial RoPE, a quarter of each head (modern.neox)

# interleaved pairs where rotate_half is declared, a quarter of each head rotated; hidden when the quarter is one pair (head_dim < 16)
class QuarterRopePairingSwapped(ModernAttention):
    def _rotate(self, x, positions, reached=0):
        with patched(self, "rope", dataclasses.replace(self.rope, pairing="interleaved")):
            return super()._rotate(x, positions, reached)


# base 1000 where 10000 is declared, a quarter of each head rotated; hidden when the quarter is one pair (head_dim < 16) or at position 0
class QuarterRopeBaseWrong(ModernAttention):
    def _rotate(self, x, positions, reached=0):
        with patched(self, "rope", dataclasses.replace(self.rope, base=1000.0)):
            return super()._rotate(x, positions, reached)


# ============================================================== grouped heads and rows that see no key

# key/value head (h // 2) % Hkv for query head h, written for groups of 2; hidden unless groups of 3 or more share one of several kv heads (6 or 8 over 2)
class KvHeadForGroupsOfTwo(ModernAttention):
    def _expand_kv(self, x):
        if self.num_kv_heads == self.num_heads:
            return x
        kv_head = (torch.arange(self.num_heads, device=x.device) // 2) % self.num_kv_heads  # (H,)
        return x[:, kv_head]  # (N, H, S, hd)


# hidden keys set to the dtype's lowest finite value, not -inf: a row that sees no key attends to all equally, not 0; hidden when every row sees a key
class MaskedWithFiniteMinimum(ModernAttention):
    def _mask(self, key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device, positions=None):
        mask = super()._mask(key_padding_mask, attn_mask, is_causal, N, L, S, dtype, device, positions)
        return None if mask is None else mask.masked_fill(torch.isneginf(mask), torch.finfo(dtype).min)


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


class SinksByLogNormaliser(ModernAttention):
    """Equivalent: the sinks through the log-normaliser, exp(logit - logsumexp(row and sink)), as kernels that
    return the LSE compute it."""

    def _softmax(self, logits):
        if self.sinks is None:
            return super()._softmax(logits)
        N, H, L, _ = logits.shape
        sink = self.sinks.to(logits.dtype)[None, :, None, None].expand(N, H, L, 1)  # (N, H, L, 1)
        normaliser = torch.logsumexp(torch.cat([logits, sink], dim=-1), dim=-1, keepdim=True)  # (N, H, L, 1)
        return torch.exp(logits - normaliser)  # (N, H, L, S)


class AlibiAsMptBias(ModernAttention):
    """Equivalent under causality: MPT's bias slope * (j - (S - 1)), the same for every query, which differs from
    -slope * |pos_i - j| on the keys a causal query sees by a constant per row (the softmax ignores it)."""

    def _alibi(self, L, S, alignment, dtype, device):
        j = torch.arange(S, device=device).to(dtype)  # (S,)
        return (self.alibi_slopes.to(dtype)[:, None] * (j - (S - 1)))[None, :, None, :]  # (1, H, 1, S)


# The bundled variants themselves, each certified with its adapter (and the zoo's mutants of it with the same one).

class Gemma2(ModernAttention):
    """Equivalent: modern.gemma2 (a softmax scale and a soft cap, built causal, a look-back window, RoPE, GQA)."""


class GptOss(ModernAttention):
    """Equivalent: modern.gpt_oss (attention sinks, a look-back window, GQA)."""


class Qwen3(ModernAttention):
    """Equivalent: modern.qwen3 (QK-norm per head before RoPE, GQA)."""


class Olmo2(ModernAttention):
    """Equivalent: modern.olmo2 (QK-norm over the whole query and key projections, RoPE, GQA)."""


class Mpt(ModernAttention):
    """Equivalent: modern.mpt (ALiBi, built causal)."""


class Llama31(ModernAttention):
    """Equivalent: modern.llama31 (RoPE base 500000 with Llama 3.1's frequency scaling)."""


class Yarn(ModernAttention):
    """Equivalent: modern.yarn (YaRN, factor 4 over 32768 trained positions)."""


class DynamicNtk(ModernAttention):
    """Equivalent: modern.dynamic_ntk (dynamic NTK scaling past 16 trained positions)."""


class LinearRope(ModernAttention):
    """Equivalent: modern.linear_rope (linear position interpolation, factor 4)."""


class MultiQuery(ModernAttention):
    """Equivalent: modern.mqa (one key/value head, RoPE)."""


class Neox(ModernAttention):
    """Equivalent: GPT-NeoX's attention (rotate_half RoPE on a quarter of each head)."""


FEATURE_CORRECT: list[tuple[str, type]] = [("ModernAttention", ModernAttention)] + [
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, ModernAttention) and obj is not ModernAttention
    and name not in dict(FEATURE_MUTANTS)
]

ALIGNMENT = {"TopLeftWhereBottomRightDeclared": BOTTOM_RIGHT, "ModernAttentionBottomRight": BOTTOM_RIGHT,
             "BottomRightViaCausalLowerRight": BOTTOM_RIGHT, "MaskedWithFiniteMinimum": BOTTOM_RIGHT}

# The bundled variant each feature mutant and correct variant is certified as (with its name and class).
VARIANT_OF = {
    "SoftcapAfterMask": bundled.GEMMA2, "SoftcapIgnoredOnFastPath": bundled.GEMMA2,
    "SoftmaxScaleIgnoredOnFastPath": bundled.GEMMA2, "Gemma2": bundled.GEMMA2,
    "AlibiTopLeftWhereBottomRightDeclared": bundled.MPT, "AlibiWrongSign": bundled.MPT, "Mpt": bundled.MPT,
    "AlibiAsMptBias": bundled.MPT,
    "SinksIgnoredOnFastPath": bundled.GPT_OSS, "SinkWeightsRenormalised": bundled.GPT_OSS, "GptOss": bundled.GPT_OSS,
    "SinksByLogNormaliser": bundled.GPT_OSS,
    "QkNormAfterRope": bundled.QWEN3, "QkNormOverAllHeads": bundled.QWEN3, "Qwen3": bundled.QWEN3,
    "Olmo2": bundled.OLMO2,
    "Llama3BlendReversed": bundled.LLAMA31, "Llama31": bundled.LLAMA31,
    "YarnWithoutAttentionFactor": bundled.YARN, "Yarn": bundled.YARN,
    "LinearScalingOnKeysOnly": bundled.LINEAR_ROPE, "LinearRope": bundled.LINEAR_ROPE,
    "DynamicNtkWithoutExponent": bundled.DYNAMIC_NTK, "DynamicNtk": bundled.DYNAMIC_NTK,
    "QuarterRopePairingSwapped": NEOX, "QuarterRopeBaseWrong": NEOX, "Neox": NEOX,
    "MultiQuery": bundled.MQA,
}

# The law that names each feature mutant's bug: it must be among the laws that fail (tests/test_zoo.py).
NAMED_BY = {
    "SoftcapAfterMask": "softcap_applies_before_masking", "SoftcapIgnoredOnFastPath": "softcap_matches_reference",
    "SoftmaxScaleIgnoredOnFastPath": "softmax_scale_is_applied",
    "AlibiTopLeftWhereBottomRightDeclared": "alibi_matches_reference", "AlibiWrongSign": "alibi_matches_reference",
    "SinksIgnoredOnFastPath": "sinks_take_attention_without_value",
    "SinkWeightsRenormalised": "sinks_take_attention_without_value",
    "QkNormAfterRope": "qk_norm_matches_reference", "QkNormOverAllHeads": "qk_norm_matches_reference",
    "Llama3BlendReversed": "rope_scaling_matches_reference", "YarnWithoutAttentionFactor": "rope_scaling_matches_reference",
    "LinearScalingOnKeysOnly": "rope_scaling_matches_reference", "DynamicNtkWithoutExponent": "rope_scaling_matches_reference",
    "QuarterRopePairingSwapped": "output_matches_reference", "QuarterRopeBaseWrong": "output_matches_reference",
    "KvHeadForGroupsOfTwo": "grouped_kv_equals_repeated_heads",
    "MaskedWithFiniteMinimum": "causal_flag_with_more_queries_than_keys",
}


def feature_adapter(name: str, cls: type = ModernAttention, alignment: str | None = None) -> ModernAdapter:
    """The adapter certifying ``cls`` (a mutant, or the correct module) under the name ``name``."""
    if name in VARIANT_OF:
        return VARIANT_OF[name].variant(name, cls)
    return ModernAdapter(name, alignment or ALIGNMENT.get(name, "top-left"), module_class=cls)


def alignment_of(name: str) -> str:
    return VARIANT_OF[name].alignment if name in VARIANT_OF else ALIGNMENT.get(name, "top-left")
