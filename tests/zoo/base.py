"""``ZooMHA``: a clean, from-scratch drop-in for ``torch.nn.MultiheadAttention``.

Same constructor, parameter names and shapes, forward signature and slow-path
semantics as ``attnspec.reference.multi_head_attention``. The forward pass is a row
of small steps, so that each mutant in :mod:`tests.zoo.mutants` overrides one
step in a few lines. Names: N batch, L query length, S key length, S' = S plus
the appended keys (``bias_k``, the zero key), E embed_dim, H heads, hd = E // H.

Policy on fully masked rows (the spec's): a query row whose keys are all masked
gets attention weights 0, so its output is ``out_proj.bias``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


class ZooMHA(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s API, written step by step."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim={embed_dim} and num_heads={num_heads}, but both should be positive")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout={dropout}, but should be in [0, 1]")
        factory = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.add_zero_attn = batch_first, add_zero_attn
        E = embed_dim
        # Registration order follows torch's, so the same seed gives the same initial values.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * E, E, **factory))  # rows [Wq; Wk; Wv]
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(E, E, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(E, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(E, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * E, **factory))  # always packed [bq; bk; bv]
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(E, E, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, E, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, E, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialisation: xavier-uniform projections, zero biases, xavier-normal bias_k/v."""
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                nn.init.xavier_normal_(b)

    # ------------------------------------------------------------------ forward
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = self._validate(query, key, value, key_padding_mask, attn_mask, is_causal)
        xq, xk, xv = self._to_batch_first(query, key, value, batched)  # (N, L, E), (N, S, kdim), (N, S, vdim)
        N, L, S = xq.shape[0], xq.shape[1], xk.shape[1]
        q, k, v = self._project(xq, xk, xv)  # (N, L, E), (N, S, E), (N, S, E)
        k, v = self._append_bias_kv(k, v)  # (N, S+1, E) with add_bias_kv
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (N, H, ·, hd)
        k, v = self._append_zero_attn(k, v)  # (N, H, S', hd)
        mask = self._mask(key_padding_mask, attn_mask, N, L, S, k.shape[2], q.dtype)  # (N|1, H|1, L|1, S') or None
        heads, attn = self._attention(q, k, v, mask, need_weights)  # (N, H, L, hd), (N, H, L, S')
        out = self._out_proj(self._merge_heads(heads))  # (N, L, E)
        out = self._from_batch_first(out, batched)
        return out, self._returned_weights(attn, need_weights, average_attn_weights, batched)

    # ------------------------------------------------------------------ layout
    def _to_batch_first(self, query, key, value, batched):
        """Each input to (N, T, D): unbatched (T, D) gets N = 1; seq-first (T, N, D) is transposed."""
        if not batched:
            return query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if self.batch_first:
            return query, key, value
        return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

    def _from_batch_first(self, out, batched):
        """(N, L, E) back to the query's layout."""
        if not batched:
            return out.squeeze(0)  # (L, E)
        return out if self.batch_first else out.transpose(0, 1)  # (L, N, E)

    # ------------------------------------------------------------------ projections
    def _proj_weights(self):
        """(Wq, Wk, Wv, bq, bk, bv); biases are None when bias=False."""
        if self._qkv_same_embed_dim:
            Wq, Wk, Wv = self.in_proj_weight.chunk(3, dim=0)  # each (E, E)
        else:
            Wq, Wk, Wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        if self.in_proj_bias is None:
            return Wq, Wk, Wv, None, None, None
        bq, bk, bv = self.in_proj_bias.chunk(3, dim=0)  # each (E,)
        return Wq, Wk, Wv, bq, bk, bv

    def _project(self, xq, xk, xv):
        Wq, Wk, Wv, bq, bk, bv = self._proj_weights()
        return F.linear(xq, Wq, bq), F.linear(xk, Wk, bk), F.linear(xv, Wv, bv)

    def _out_proj(self, merged):
        return F.linear(merged, self.out_proj.weight, self.out_proj.bias)  # (N, L, E)

    # ------------------------------------------------------------------ appended keys
    def _append_bias_kv(self, k, v):
        """One learned key and value appended after the S projected ones."""
        if self.bias_k is None:
            return k, v
        N = k.shape[0]
        k = torch.cat([k, self.bias_k.expand(N, 1, self.embed_dim)], dim=1)  # (N, S+1, E)
        v = torch.cat([v, self.bias_v.expand(N, 1, self.embed_dim)], dim=1)
        return k, v

    def _append_zero_attn(self, k, v):
        """A zero key and a zero value per head, after the head split."""
        if not self.add_zero_attn:
            return k, v
        N, H, _, hd = k.shape
        k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)  # (N, H, S'+1, hd)
        v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
        return k, v

    # ------------------------------------------------------------------ heads
    def _split_heads(self, x):
        """(N, T, E) -> (N, H, T, hd); head h holds features [h*hd, (h+1)*hd)."""
        N, T, _ = x.shape
        return x.reshape(N, T, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, heads):
        """(N, H, L, hd) -> (N, L, E): heads side by side."""
        N, _, L, _ = heads.shape
        return heads.transpose(1, 2).reshape(N, L, self.embed_dim)

    # ------------------------------------------------------------------ masks
    def _mask(self, key_padding_mask, attn_mask, N, L, S, S1, dtype):
        """Both masks as one additive float mask broadcastable to (N, H, L, S'), or None."""
        if key_padding_mask is None and attn_mask is None:
            return None
        kpm, am = self._pad_masks(key_padding_mask, attn_mask, S1 - S)
        parts = []
        if am is not None:
            parts.append(self._attn_mask_per_head(self._canonical(am, dtype), N))
        if kpm is not None:
            parts.append(self._kpm_per_head(self._canonical(kpm, dtype), N))
        return self._merge_masks(parts)

    def _pad_masks(self, kpm, am, extra):
        """Append ``extra`` always-visible columns for the appended keys."""
        pad = lambda m: None if m is None else F.pad(m, (0, extra), value=False if m.dtype == torch.bool else 0.0)  # noqa: E731
        return (pad(kpm), pad(am)) if extra else (kpm, am)

    def _canonical(self, mask, dtype):
        """bool True = masked -> -inf; a float mask is added as it is."""
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, NEG_INF)
        return mask.to(dtype)

    def _attn_mask_per_head(self, am, N):
        """(L, S') -> (1, 1, L, S'); (N*H, L, S') indexed b*H + h -> (N, H, L, S')."""
        if am.dim() == 2:
            return am[None, None]
        return am.reshape(N, self.num_heads, am.shape[-2], am.shape[-1])

    def _kpm_per_head(self, kpm, N):
        """(N, S') or unbatched (S',) -> (N, 1, 1, S'): the same keys hidden from every query."""
        return kpm.reshape(N, 1, 1, kpm.shape[-1])

    def _merge_masks(self, parts):
        total = parts[0]
        for m in parts[1:]:
            total = total + m
        return total

    # ------------------------------------------------------------------ attention
    def _attention(self, q, k, v, mask, need_weights):
        """Returns (heads (N, H, L, hd), weights (N, H, L, S'))."""
        logits = self._apply_mask(self._logits(q, k), mask)  # (N, H, L, S')
        attn = self._dropout(self._softmax(logits))
        return self._attend(attn, v), attn

    def _scale(self):
        return self.head_dim ** -0.5

    def _logits(self, q, k):
        return (q * self._scale()) @ k.transpose(-2, -1)  # (N, H, L, S')

    def _apply_mask(self, logits, mask):
        return logits if mask is None else logits + mask

    def _softmax(self, logits):
        """Softmax over keys; a row whose logits are all -inf gets weights 0."""
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        return torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)

    def _dropout(self, attn):
        return F.dropout(attn, p=self.dropout, training=self.training)

    def _attend(self, attn, v):
        return attn @ v  # (N, H, L, hd)

    def _returned_weights(self, attn, need_weights, average_attn_weights, batched):
        """Batch-first weights, averaged over heads (N, L, S') or per head (N, H, L, S')."""
        if not need_weights:
            return None
        w = attn.mean(dim=1) if average_attn_weights else attn
        return w if batched else w.squeeze(0)

    # ------------------------------------------------------------------ validation
    def _validate(self, query, key, value, key_padding_mask, attn_mask, is_causal) -> bool:
        """Raise ValueError naming the argument for inputs outside the API; return ``batched``."""
        if query.dim() not in (2, 3):
            raise ValueError(f"query.dim()={query.dim()}, but should be 3 (batched) or 2 (unbatched)")
        batched = query.dim() == 3
        for name, t in (("key", key), ("value", value)):
            if t.dim() != query.dim():
                raise ValueError(f"{name}.dim()={t.dim()}, but should equal query.dim()={query.dim()}")
        for name, t, width in (("query", query, self.embed_dim), ("key", key, self.kdim),
                               ("value", value, self.vdim)):
            if t.shape[-1] != width:
                raise ValueError(f"{name}.shape[-1]={t.shape[-1]}, but should be {width}")
        seq, batch = (1, 0) if batched and self.batch_first else (0, 1)
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key.shape={tuple(key.shape)} and value.shape={tuple(value.shape)}, "
                             "but their batch and sequence sizes should match")
        if batched and key.shape[batch] != query.shape[batch]:
            raise ValueError(f"key batch size {key.shape[batch]}, but should equal the query's "
                             f"{query.shape[batch]}")
        N = query.shape[batch] if batched else 1
        L, S = query.shape[seq], key.shape[seq]
        if key_padding_mask is not None:
            self._check_mask_dtype("key_padding_mask", key_padding_mask)
            want = (N, S) if batched else (S,)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(f"key_padding_mask.shape={tuple(key_padding_mask.shape)}, but should be {want}")
        if attn_mask is not None:
            self._check_mask_dtype("attn_mask", attn_mask)
            allowed = [(L, S), (N * self.num_heads, L, S)]
            if tuple(attn_mask.shape) not in allowed:
                raise ValueError(f"attn_mask.shape={tuple(attn_mask.shape)}, but should be one of {allowed}")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True is a hint about attn_mask, but attn_mask is None")
        return batched

    def _check_mask_dtype(self, name, mask):
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"{name}.dtype={mask.dtype}, but should be torch.bool or a floating dtype")
