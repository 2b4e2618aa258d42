"""The mutant zoo: drop-ins for ``nn.MultiheadAttention`` with exactly one realistic bug each.

Every mutant subclasses :class:`~tests.zoo.base.ZooMHA` and overrides one step
(rarely two, when one bug touches two places). The comment above each class
names the bug and the configurations that hide it; ``describe(cls)`` reads it.
``MUTANTS`` must all be rejected by the suite; ``EQUIVALENTS`` (at the end)
compute the same function differently and must all be accepted.

Shapes: N batch, H heads, L query length, S keys, S' = S plus appended keys,
E embed_dim, hd head_dim.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from .base import NEG_INF, ZooMHA


# ============================================================== projections

# W_k used for the values (copy-paste in the projection); hidden only when W_k == W_v (raises when kdim != vdim)
class ValueUsesKeyWeight(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return Wq, Wk, Wk, bq, bk, bv


# values projected from the key input (the value argument is ignored); hidden when key is value (self-attention, k = v tests)
class ValueFromKeyInput(ZooMHA):
    def _project(self, xq, xk, xv):
        return super()._project(xq, xk, xk)


# value bias b_v dropped; hidden when biases are zero (torch's init) or bias=False
class ValueBiasDropped(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return Wq, Wk, Wv, bq, bk, None


# b_q used for q, k and v (in_proj_bias[:E] shared); hidden when biases are zero (torch's init) or bias=False
class QueryBiasShared(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return Wq, Wk, Wv, bq, bq, bq


# b_k and b_v swapped when chunking in_proj_bias; hidden when biases are zero (torch's init) or bias=False
class KeyValueBiasSwapped(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return Wq, Wk, Wv, bq, bv, bk


# packed in_proj rows read in the order [W_k; W_q; W_v] (biases too); hidden with kdim/vdim != E, or when each query sees one key
class PackedRowsKQV(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return (Wk, Wq, Wv, bk, bq, bv) if self._qkv_same_embed_dim else (Wq, Wk, Wv, bq, bk, bv)


# k_proj_weight and v_proj_weight swapped in the separate-weights path; hidden when kdim = vdim = E (raises when kdim != vdim)
class SeparateWeightsSwapped(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return (Wq, Wk, Wv, bq, bk, bv) if self._qkv_same_embed_dim else (Wq, Wv, Wk, bq, bk, bv)


# in_proj_bias ignored in the separate-weights path (kdim/vdim given); hidden when kdim = vdim = E, zero biases or bias=False
class SeparateWeightsNoBias(ZooMHA):
    def _proj_weights(self):
        Wq, Wk, Wv, bq, bk, bv = super()._proj_weights()
        return (Wq, Wk, Wv, bq, bk, bv) if self._qkv_same_embed_dim else (Wq, Wk, Wv, None, None, None)


# output projection applied without its bias; hidden when biases are zero (torch's init) or bias=False
class OutProjNoBias(ZooMHA):
    def _out_proj(self, merged):
        return F.linear(merged, self.out_proj.weight)


# output projection missing (heads concatenated and returned); hidden only when W_o = I and b_o = 0
class NoOutProj(ZooMHA):
    def _out_proj(self, merged):
        return merged


# the weights multiply the projected keys, not the values (attn @ K); hidden only when key and value projections coincide
class AttendToKeys(ZooMHA):
    def _project(self, xq, xk, xv):
        q, k, _ = super()._project(xq, xk, xv)
        return q, k, k


# ============================================================== scaling

# logits scaled by 1/sqrt(E) instead of 1/sqrt(head_dim); hidden when H=1 or each query sees one key
class ScaleByEmbedDim(ZooMHA):
    def _scale(self):
        return self.embed_dim ** -0.5


# logits not scaled at all; hidden when head_dim=1
class NoScale(ZooMHA):
    def _scale(self):
        return 1.0


# logits multiplied by sqrt(head_dim) instead of divided; hidden when head_dim=1
class ScaleMultiplied(ZooMHA):
    def _scale(self):
        return self.head_dim ** 0.5


# scale applied twice (to q, then to the logits again): 1/head_dim; hidden when head_dim=1
class ScaleAppliedTwice(ZooMHA):
    def _logits(self, q, k):
        return super()._logits(q, k) * self._scale()


# scale from an integer square root, 1/math.isqrt(head_dim); hidden when head_dim is a perfect square (1, 4, 9)
class ScaleIntegerSqrt(ZooMHA):
    def _scale(self):
        return 1.0 / math.isqrt(self.head_dim)


# scale from the raw key width (key.size(-1) = kdim) instead of head_dim; hidden when H=1 and kdim is None
class ScaleByKeyInputWidth(ZooMHA):
    def _scale(self):
        return self.kdim ** -0.5


# ============================================================== head split and merge

# heads split with reshape(N, H, T, hd), no transpose; hidden when H=1, or L = S' = 1
class SplitWithoutTranspose(ZooMHA):
    def _split_heads(self, x):
        N, T, _ = x.shape
        return x.reshape(N, self.num_heads, T, self.head_dim)  # (N, H, T, hd), features scrambled


# head h takes features h::H (a head-minor view(N, T, hd, H)); hidden when H=1 or head_dim=1
class HeadMinorSplit(ZooMHA):
    def _split_heads(self, x):
        N, T, _ = x.shape
        return x.reshape(N, T, self.head_dim, self.num_heads).permute(0, 3, 1, 2)  # (N, H, T, hd)


# heads merged with reshape(N, L, E), no transpose (pytorch#67651); hidden when H=1 or L=1
class MergeWithoutTranspose(ZooMHA):
    def _merge_heads(self, heads):
        N, _, L, _ = heads.shape
        return heads.reshape(N, L, self.embed_dim)  # rows of different queries mixed


# heads merged head-minor (feature d*H + h); hidden when H=1 or head_dim=1
class MergeHeadMinor(ZooMHA):
    def _merge_heads(self, heads):
        N, _, L, _ = heads.shape
        return heads.permute(0, 2, 3, 1).reshape(N, L, self.embed_dim)  # (N, L, hd*H)


# ============================================================== masks

# bool masks read with SDPA's polarity, True = attend (pytorch#170400); hidden when no bool mask is given
class MaskPolarityInverted(ZooMHA):
    def _canonical(self, mask, dtype):
        if mask.dtype == torch.bool:
            mask = ~mask
        return super()._canonical(mask, dtype)


# key_padding_mask broadcast over queries, (N, 1, S', 1) instead of (N, 1, 1, S'); hidden without key padding (wrong shapes unless L = S')
class KpmBroadcastOverQueries(ZooMHA):
    def _kpm_per_head(self, kpm, N):
        return kpm.reshape(N, 1, kpm.shape[-1], 1)


# key_padding_mask expanded per head with repeat, not repeat_interleave (row b*H+h gets sample (b*H+h) % N); hidden when B=1, H=1 or all samples pad alike
class KpmRepeatNotInterleave(ZooMHA):
    def _kpm_per_head(self, kpm, N):
        flat = kpm.reshape(N, -1).repeat(self.num_heads, 1)  # (H*N, S'), sample-minor
        return flat.reshape(N, self.num_heads, 1, -1)


# key_padding_mask dropped whenever an attn_mask is given; hidden unless both masks are given
class KpmIgnoredWithAttnMask(ZooMHA):
    def _merge_masks(self, parts):
        return parts[0]  # the attn_mask when there is one


# 3-D attn_mask read as h*N + b instead of b*H + h (repeat vs repeat_interleave); hidden when B=1, H=1 or the mask is 2-D
class Mask3dHeadMajor(ZooMHA):
    def _attn_mask_per_head(self, am, N):
        if am.dim() == 2:
            return super()._attn_mask_per_head(am, N)
        return am.reshape(self.num_heads, N, am.shape[-2], am.shape[-1]).transpose(0, 1)  # (N, H, L, S')


# float mask treated as bool, every nonzero entry masks its key (pytorch#107084); hidden when float masks hold only 0 and -inf
class FloatMaskAsBool(ZooMHA):
    def _canonical(self, mask, dtype):
        return super()._canonical(mask if mask.dtype == torch.bool else mask != 0, dtype)


# float masks ignored, only bool masks applied; hidden without float masks
class FloatMaskIgnored(ZooMHA):
    def _canonical(self, mask, dtype):
        return super()._canonical(mask, dtype) if mask.dtype == torch.bool else mask.new_zeros(mask.shape, dtype=dtype)


# bool masks filled with -1e4 instead of -inf; hidden unless a row is fully masked (it then averages all keys) or logits pass 1e4
class FiniteMaskFill(ZooMHA):
    def _canonical(self, mask, dtype):
        if mask.dtype != torch.bool:
            return mask.to(dtype)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -1e4)


# masked logits set to 0 instead of -inf (masked_fill(mask, 0)); hidden without masks
class MaskFillZero(ZooMHA):
    def _apply_mask(self, logits, mask):
        if mask is None:
            return logits
        return (logits + mask).masked_fill(torch.isneginf(mask), 0.0)


# mask applied after the softmax (masked weights zeroed, rows not renormalised); hidden without masks
class MaskAfterSoftmax(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        attn = self._softmax(self._logits(q, k))  # (N, H, L, S'), unmasked
        if mask is not None:
            attn = attn.masked_fill(torch.isneginf(mask), 0.0)
        attn = self._dropout(attn)
        return self._attend(attn, v), attn


# attn_mask transposed (read as (S', L)); hidden when L = S' and the mask is symmetric, or without attn_mask (wrong shapes when L != S')
class AttnMaskTransposed(ZooMHA):
    def _attn_mask_per_head(self, am, N):
        return super()._attn_mask_per_head(am.transpose(-2, -1), N)


# the mask is added before the scale, so float masks get scaled too; hidden with bool masks only, or head_dim=1
class FloatMaskScaled(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        logits = self._apply_mask(q @ k.transpose(-2, -1), mask) * self._scale()  # (N, H, L, S')
        attn = self._dropout(self._softmax(logits))
        return self._attend(attn, v), attn


# masks applied only when need_weights=True (the need_weights=False path forgets them); hidden with need_weights=True, torch's default
class MaskOnlyWhenNeedWeights(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        return super()._attention(q, k, v, mask if need_weights else None, need_weights)


# ============================================================== softmax

# softmax over the query axis (dim=-2); hidden when L = 1 and S' = 1
class SoftmaxOverQueries(ZooMHA):
    def _softmax(self, logits):
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        return torch.softmax(logits.masked_fill(empty, 0.0), dim=-2).masked_fill(empty, 0.0)


# softmax without max-subtraction: exp overflows, inf/inf = NaN (pytorch#60939); hidden at ordinary magnitudes (logits < 88 in fp32, < 709 in fp64)
class NaiveSoftmax(ZooMHA):
    def _softmax(self, logits):
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        e = logits.masked_fill(empty, 0.0).exp()
        return (e / e.sum(dim=-1, keepdim=True)).masked_fill(empty, 0.0)


# softmax shifted by the global max (x - x.max()) instead of each row's: rows far below it underflow to 0/0; hidden at ordinary magnitudes
class GlobalMaxSoftmax(ZooMHA):
    def _softmax(self, logits):
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        x = logits.masked_fill(empty, 0.0)
        e = (x - x.amax()).exp() if x.numel() else x  # one max for the whole (N, H, L, S') tensor
        return (e / e.sum(dim=-1, keepdim=True)).masked_fill(empty, 0.0)


# plain softmax: NaN weights and output on fully masked rows while declaring zeros (pytorch#40932); hidden unless a row is fully masked
class NanOnFullyMaskedRows(ZooMHA):
    def _softmax(self, logits):
        return torch.softmax(logits, dim=-1)


# softmax upcast to float32 and the returned weights left in float32; hidden when dtype is float32
class SoftmaxFloat32Weights(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        logits = self._apply_mask(self._logits(q, k), mask)
        attn = self._dropout(self._softmax(logits.float()))  # float32 for stability...
        return self._attend(attn.to(v.dtype), v), attn  # ...but never cast back for the caller


class _SoftmaxMissingTerm(torch.autograd.Function):
    """Softmax whose backward returns g * y, dropping the - y * sum(g * y) term."""

    @staticmethod
    def forward(ctx, logits):
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        y = torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


# hand-written softmax backward missing the -y*sum(g*y) term; hidden unless gradients are checked
class SoftmaxWrongBackward(ZooMHA):
    def _softmax(self, logits):
        return _SoftmaxMissingTerm.apply(logits)


# ============================================================== add_bias_kv / add_zero_attn

# bias_k/bias_v prepended before the real keys while the masks are padded at the end; hidden without add_bias_kv, or with no mask and need_weights=False
class BiasKvPrepended(ZooMHA):
    def _append_bias_kv(self, k, v):
        if self.bias_k is None:
            return k, v
        N = k.shape[0]
        k = torch.cat([self.bias_k.expand(N, 1, self.embed_dim), k], dim=1)  # (N, S+1, E), learned key first
        v = torch.cat([self.bias_v.expand(N, 1, self.embed_dim), v], dim=1)
        return k, v


# bias_k/bias_v appended to the key/value inputs before the projection, so they get projected; hidden without add_bias_kv (raises when kdim/vdim != E)
class BiasKvBeforeProjection(ZooMHA):
    def _append_bias_kv(self, k, v):
        if self.bias_k is None:
            return k, v
        _, Wk, Wv, _, bk, bv = self._proj_weights()
        N = k.shape[0]
        k = torch.cat([k, F.linear(self.bias_k, Wk, bk).expand(N, 1, self.embed_dim)], dim=1)  # (N, S+1, E)
        v = torch.cat([v, F.linear(self.bias_v, Wv, bv).expand(N, 1, self.embed_dim)], dim=1)
        return k, v


# bias_k/bias_v added to every key/value like a bias, instead of appended as one more key; hidden without add_bias_kv
class BiasKvAddedToKeys(ZooMHA):
    def _append_bias_kv(self, k, v):
        if self.bias_k is None:
            return k, v
        return k + self.bias_k, v + self.bias_v  # (N, S, E): no extra key


# the zero key/value appended before the projection, so it becomes (b_k, b_v); hidden without add_zero_attn, or with zero biases / bias=False
class ZeroAttnBeforeProjection(ZooMHA):
    def _append_zero_attn(self, k, v):
        if not self.add_zero_attn:
            return k, v
        _, _, _, _, bk, bv = self._proj_weights()
        N, H, _, hd = k.shape
        zk = k.new_zeros(N, H, 1, hd) if bk is None else bk.reshape(1, H, 1, hd).expand(N, H, 1, hd)
        zv = v.new_zeros(N, H, 1, hd) if bv is None else bv.reshape(1, H, 1, hd).expand(N, H, 1, hd)
        return torch.cat([k, zk], dim=2), torch.cat([v, zv], dim=2)  # (N, H, S'+1, hd)


# masks padded on the left for the appended keys, F.pad(m, (extra, 0)); hidden without add_bias_kv/add_zero_attn, or without masks
class ExtraKeysMaskPaddedAtFront(ZooMHA):
    def _pad_masks(self, kpm, am, extra):
        pad = lambda m: None if m is None else F.pad(m, (extra, 0), value=False if m.dtype == torch.bool else 0.0)  # noqa: E731
        return (pad(kpm), pad(am)) if extra else (kpm, am)


# ============================================================== dropout

# dropout on the weights even in eval mode (training=True hard-coded); hidden when dropout=0
class DropoutInEval(ZooMHA):
    def _dropout(self, attn):
        return F.dropout(attn, p=self.dropout, training=True)


# dropout without the 1/(1-p) rescaling; hidden in eval or when dropout=0
class DropoutNotRescaled(ZooMHA):
    def _dropout(self, attn):
        if not self.training or self.dropout == 0:
            return attn
        return attn * (torch.rand_like(attn) >= self.dropout)


# dropout on the output instead of the weights; hidden in eval or when dropout=0
class DropoutOnOutput(ZooMHA):
    def _dropout(self, attn):
        return attn

    def _out_proj(self, merged):
        return F.dropout(super()._out_proj(merged), p=self.dropout, training=self.training)


# dropout on the logits before the softmax; hidden in eval or when dropout=0
class DropoutOnLogits(ZooMHA):
    def _softmax(self, logits):
        return super()._softmax(F.dropout(logits, p=self.dropout, training=self.training))

    def _dropout(self, attn):
        return attn


# returned weights are the softmax before dropout while the output uses the dropped ones; hidden in eval or when dropout=0
class WeightsPreDropout(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        attn = self._softmax(self._apply_mask(self._logits(q, k), mask))  # (N, H, L, S')
        return self._attend(self._dropout(attn), v), attn


# the need_weights=False path calls SDPA without dropout_p; hidden with need_weights=True, in eval or when dropout=0
class NoWeightsPathNoDropout(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        if need_weights:
            return super()._attention(q, k, v, mask, need_weights)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None  # dropout_p forgotten


# ============================================================== fast path (need_weights=False)

# the need_weights=False path pre-scales q and then calls SDPA, which scales again; hidden with need_weights=True or head_dim=1
class NoWeightsPathScaledTwice(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        if need_weights:
            return super()._attention(q, k, v, mask, need_weights)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q * self._scale(), k, v, attn_mask=mask, dropout_p=p), None


# an inference fast path (eval + no_grad) reads float masks as bool, nonzero = masked (pytorch#107084); hidden with autograd on, in training, or bool masks
class FastPathFloatMaskAsBool(ZooMHA):
    def _canonical(self, mask, dtype):
        fast_path = not self.training and not torch.is_grad_enabled()
        if fast_path and mask.is_floating_point():
            mask = mask != 0
        return super()._canonical(mask, dtype)


# ============================================================== returned weights

# weights summed over heads instead of averaged; hidden when H=1
class WeightsSummedOverHeads(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        w = super()._returned_weights(attn, need_weights, average_attn_weights, batched)
        return w * self.num_heads if need_weights and average_attn_weights else w


# averaged weights are head 0's weights instead of the mean; hidden when H=1
class WeightsFirstHead(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        if need_weights and average_attn_weights:
            return attn[:, 0] if batched else attn[0, 0]  # (N, L, S')
        return super()._returned_weights(attn, need_weights, average_attn_weights, batched)


# returned weights are the masked logits, before the softmax; hidden with need_weights=False
class WeightsPreSoftmax(ZooMHA):
    def _attention(self, q, k, v, mask, need_weights):
        logits = self._apply_mask(self._logits(q, k), mask)  # (N, H, L, S')
        return self._attend(self._dropout(self._softmax(logits)), v), logits


# weights returned (L, N, S') in seq-first mode, following the query's layout; hidden when batch_first=True, unbatched, or B = L = 1
class WeightsSeqFirst(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        w = super()._returned_weights(attn, need_weights, average_attn_weights, batched)
        if w is None or not batched or self.batch_first:
            return w
        return w.transpose(0, 1) if average_attn_weights else w.permute(2, 0, 1, 3)  # (L, N, ...)


# average_attn_weights=False ignored (weights always averaged); hidden with average_attn_weights=True, the default
class AverageFlagIgnored(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        return super()._returned_weights(attn, need_weights, True, batched)


# weights returned even when need_weights=False; hidden with need_weights=True, the default
class WeightsAlwaysReturned(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        return super()._returned_weights(attn, True, average_attn_weights, batched)


# unbatched weights keep the batch axis, (1, L, S'); hidden with batched input
class UnbatchedWeightsNotSqueezed(ZooMHA):
    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        return super()._returned_weights(attn, need_weights, average_attn_weights, True)


# bfloat16/float16 computed in float32 and the output never cast back; hidden when dtype is float32 or float64
class LowPrecisionOutputNotCastBack(ZooMHA):
    def _project(self, xq, xk, xv):
        if xq.dtype not in (torch.bfloat16, torch.float16):
            return super()._project(xq, xk, xv)
        Wq, Wk, Wv, bq, bk, bv = (None if t is None else t.float() for t in self._proj_weights())
        return F.linear(xq.float(), Wq, bq), F.linear(xk.float(), Wk, bk), F.linear(xv.float(), Wv, bv)

    def _out_proj(self, merged):
        W, b = self.out_proj.weight, self.out_proj.bias
        return F.linear(merged, W.to(merged.dtype), None if b is None else b.to(merged.dtype))  # stays float32


# ============================================================== layouts

# seq-first input: only the query is transposed, key/value read as (N, S, ·); hidden when batch_first=True, unbatched, or B = S = 1
class SeqFirstQueryOnly(ZooMHA):
    def _to_batch_first(self, query, key, value, batched):
        if batched and not self.batch_first:
            return query.transpose(0, 1), key, value  # key/value still (S, N, ·)
        return super()._to_batch_first(query, key, value, batched)


# unbatched input unsqueezed at dim 1 and then read with batch_first, so every query is its own sample; hidden when batch_first=False, or L = S = 1
class UnbatchedAsBatchFirst(ZooMHA):
    def _to_batch_first(self, query, key, value, batched):
        if batched:
            return super()._to_batch_first(query, key, value, batched)
        q, k, v = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)  # (T, 1, D)
        return (q, k, v) if self.batch_first else (q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))


# output left batch-first in seq-first mode (not transposed back); hidden when batch_first=True, unbatched, or B = L = 1
class OutputLeftBatchFirst(ZooMHA):
    def _from_batch_first(self, out, batched):
        return out if batched else out.squeeze(0)


# ============================================================== hygiene

# `query *= scale` folds the scale into the caller's query in place (in self-attention k and v too); hidden when head_dim=1
class InPlaceQueryScale(ZooMHA):
    def _project(self, xq, xk, xv):
        xq *= self._scale()  # a view of the caller's tensor
        Wq, Wk, Wv, bq, bk, bv = self._proj_weights()
        q = F.linear(xq, Wq, None if bq is None else bq * self._scale())
        return q, F.linear(xk, Wk, bk), F.linear(xv, Wv, bv)

    def _logits(self, q, k):
        return q @ k.transpose(-2, -1)  # the scale is already in q


# key projection cached on the first call and reused while the key shape is unchanged; hidden when each module is called once
class CachedKeyProjection(ZooMHA):
    def _project(self, xq, xk, xv):
        q, k, v = super()._project(xq, xk, xv)
        cached = getattr(self, "_cached_k", None)
        if cached is not None and cached.shape == k.shape and cached.dtype == k.dtype:
            return q, cached, v
        self._cached_k = k
        return q, k, v


# the caller's bool key_padding_mask flipped in place to SDPA's polarity (logical_not_); hidden when each mask tensor is used once and never read again
class KpmInvertedInPlace(ZooMHA):
    def _mask(self, key_padding_mask, attn_mask, N, L, S, S1, dtype):
        if key_padding_mask is None or key_padding_mask.dtype != torch.bool:
            return super()._mask(key_padding_mask, attn_mask, N, L, S, S1, dtype)
        attend = key_padding_mask.logical_not_()  # in place: True = attend now, in the caller's tensor too
        return super()._mask(~attend, attn_mask, N, L, S, S1, dtype)


# ============================================================== bad input

# integer masks accepted and added as floats, instead of raising ValueError; hidden when masks are bool or float
class AcceptsIntMask(ZooMHA):
    def _check_mask_dtype(self, name, mask):
        pass


# ============================================================== verdicts (holes that used to let a wrong module pass)

# NaN output whenever weights are asked for, twice the output when not; hidden when a NaN on the expected side of a comparison excuses any value
class NanOnWeightsPath(ZooMHA):
    def forward(self, *args, need_weights=True, **kwargs):
        out, w = super().forward(*args, need_weights=need_weights, **kwargs)
        return (torch.full_like(out, float("nan")) if need_weights else 2 * out), w


# +inf everywhere with autograd on, -inf under torch.no_grad(); hidden when an infinity matches one of either sign
class InfSignFlipsUnderNoGrad(ZooMHA):
    def forward(self, *args, **kwargs):
        out, w = super().forward(*args, **kwargs)
        return torch.full_like(out, float("inf") if torch.is_grad_enabled() else float("-inf")), w


# bfloat16 logits saturate at +-4 (a "safe" low-precision softmax); hidden in float32/64 and at small logits
class Bf16SaturatingLogits(ZooMHA):
    def _logits(self, q, k):
        logits = super()._logits(q, k)
        return logits.clamp(-4, 4) if logits.dtype == torch.bfloat16 else logits


# bfloat16 weight rows of 7+ keys returned 1.2x too large (output right); hidden with short rows or a bound that grows with S
class Bf16LongRowsOverOne(ZooMHA):
    def _returned_weights(self, attn, *args):
        w = super()._returned_weights(attn, *args)
        return w * 1.2 if w is not None and w.dtype == torch.bfloat16 and w.shape[-1] >= 7 else w


# ============================================================== registry

def describe(cls) -> str:
    """A mutant's one-line comment ('<bug>; hidden when <configurations>'), or an equivalent's docstring."""
    comment = inspect.getcomments(cls)
    if comment:
        return comment.strip().lstrip("#").strip()
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


MUTANTS: list[tuple[str, type]] = [  # every ZooMHA subclass defined above, in order
    (name, obj) for name, obj in list(globals().items())
    if inspect.isclass(obj) and issubclass(obj, ZooMHA) and obj is not ZooMHA and not name.startswith("_")
]


# ============================================================== equivalents (must be accepted)

class ScaleOnKeys(ZooMHA):
    """Equivalent: the 1/sqrt(hd) scale applied to the keys instead of the queries."""

    def _logits(self, q, k):
        return q @ (k * self._scale()).transpose(-2, -1)  # (N, H, L, S')


class ScaleAfterProduct(ZooMHA):
    """Equivalent: the scale applied to the logits, after the product."""

    def _logits(self, q, k):
        return (q @ k.transpose(-2, -1)) * self._scale()  # (N, H, L, S')


class SoftmaxViaLogsumexp(ZooMHA):
    """Equivalent: softmax written as exp(x - logsumexp(x)); empty rows give 0."""

    def _softmax(self, logits):
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        x = logits.masked_fill(empty, 0.0)
        return torch.exp(x - torch.logsumexp(x, dim=-1, keepdim=True)).masked_fill(empty, 0.0)


class StreamingSoftmax(ZooMHA):
    """Equivalent: online softmax over blocks of keys (FlashAttention's recurrence), one pass.

    Keeps a running max ``m``, normaliser ``l`` and unnormalised output ``acc``
    per query row, rescaling them as each block raises the max. Dropout is
    applied to the unnormalised block probabilities, which commutes with the
    final normalisation; the returned weights reuse the same keep-masks.
    """

    BLOCK = 2

    def _attention(self, q, k, v, mask, need_weights):
        logits = self._apply_mask(self._logits(q, k), mask)  # (N, H, L, S')
        N, H, L, S1 = logits.shape
        m = logits.new_full((N, H, L, 1), NEG_INF)  # running max
        l = logits.new_zeros(N, H, L, 1)  # running sum of exp(logit - m)
        acc = logits.new_zeros(N, H, L, v.shape[-1])  # running sum of exp(logit - m) * v
        keeps = []
        for start in range(0, S1, self.BLOCK):
            block = logits[..., start:start + self.BLOCK]  # (N, H, L, b)
            m_new = torch.maximum(m, block.amax(dim=-1, keepdim=True))
            m_safe = m_new.masked_fill(torch.isneginf(m_new), 0.0)  # rows masked so far stay at 0
            p = torch.exp(block - m_safe)
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
            keep = self._dropout(torch.ones_like(p))  # 0 or 1/(1-p_drop)
            l = l * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + (p * keep) @ v[:, :, start:start + self.BLOCK]
            m = m_new
            keeps.append(keep)
        denom = l.masked_fill(l == 0, 1.0)  # fully masked rows: acc = 0, weights 0
        heads = acc / denom  # (N, H, L, hd)
        m_safe = m.masked_fill(torch.isneginf(m), 0.0)
        keep = torch.cat(keeps, dim=-1) if keeps else torch.ones_like(logits)
        attn = torch.exp(logits - m_safe) / denom * keep  # (N, H, L, S'), recomputed from the final stats
        return heads, attn


class Float64Inside(ZooMHA):
    """Equivalent: every step in float64; output and weights cast back to the parameter dtype."""

    def _proj_weights(self):
        return tuple(None if t is None else t.double() for t in super()._proj_weights())

    def _project(self, xq, xk, xv):
        return super()._project(xq.double(), xk.double(), xv.double())

    def _append_bias_kv(self, k, v):
        k, v = super()._append_bias_kv(k, v)  # torch.cat promotes bias_k/bias_v to float64
        return k.double(), v.double()

    def _out_proj(self, merged):
        W, b = self.out_proj.weight, self.out_proj.bias
        out = F.linear(merged, W.double(), None if b is None else b.double())
        return out.to(W.dtype)

    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        w = super()._returned_weights(attn, need_weights, average_attn_weights, batched)
        return None if w is None else w.to(self.out_proj.weight.dtype)


class PerHeadLoop(ZooMHA):
    """Equivalent: logits, softmax and weighted values computed one head at a time, then stacked."""

    def _attention(self, q, k, v, mask, need_weights):
        H = q.shape[1]
        probs = []
        for h in range(H):
            logits = (q[:, h] * self._scale()) @ k[:, h].transpose(-2, -1)  # (N, L, S')
            if mask is not None:
                logits = logits + mask[:, min(h, mask.shape[1] - 1)]  # mask is (N|1, H|1, L|1, S')
            probs.append(self._softmax(logits))
        attn = self._dropout(torch.stack(probs, dim=1))  # (N, H, L, S')
        heads = torch.stack([attn[:, h] @ v[:, h] for h in range(H)], dim=1)  # (N, H, L, hd)
        return heads, attn


class EinsumFormulation(ZooMHA):
    """Equivalent: einsum for the logits and values, and W_o applied per head without merging."""

    def _logits(self, q, k):
        return torch.einsum("nhld,nhsd->nhls", q, k) * self._scale()

    def _attend(self, attn, v):
        return torch.einsum("nhls,nhsd->nhld", attn, v)

    def _merge_heads(self, heads):
        return heads  # (N, H, L, hd): W_o is split per head in _out_proj instead

    def _out_proj(self, heads):
        W, b = self.out_proj.weight, self.out_proj.bias  # W: (E, E), column block h belongs to head h
        per_head = W.reshape(self.embed_dim, self.num_heads, self.head_dim)  # (E, H, hd)
        out = torch.einsum("nhld,ehd->nle", heads, per_head)
        return out if b is None else out + b


class SdpaWhenNoWeights(ZooMHA):
    """Equivalent: like torch's own slow path, F.scaled_dot_product_attention when need_weights=False."""

    def _attention(self, q, k, v, mask, need_weights):
        if need_weights or k.shape[2] == 0:
            return super()._attention(q, k, v, mask, need_weights)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p), None


EQUIVALENTS: list[tuple[str, type]] = [
    ("ScaleOnKeys", ScaleOnKeys),
    ("ScaleAfterProduct", ScaleAfterProduct),
    ("SoftmaxViaLogsumexp", SoftmaxViaLogsumexp),
    ("StreamingSoftmax", StreamingSoftmax),
    ("Float64Inside", Float64Inside),
    ("PerHeadLoop", PerHeadLoop),
    ("EinsumFormulation", EinsumFormulation),
    ("SdpaWhenNoWeights", SdpaWhenNoWeights),
]
