"""Multi-head attention over ``F.scaled_dot_product_attention``: a drop-in ``nn.MultiheadAttention``.

Same constructor, parameter names and shapes, forward signature and results as
torch's module (its slow path, written out in ``spec/reference.py``), with the
spec's policy where torch is inconsistent:

* a query row whose keys are all masked attends to nothing: its attention is 0,
  so its output is ``out_proj.bias``, its weights are 0 and its gradients finite;
* ``is_causal=True`` applies the top-left causal mask (SDPA's), merged with any
  ``attn_mask`` and ``key_padding_mask`` as masks add (torch's slow path raises without
  an ``attn_mask``, its fast path ignores the flag, and with ``need_weights=False`` it drops
  the ``attn_mask``: the flag is only a hint there). Alone, it reaches SDPA as its own flag.
* ``num_kv_heads`` (an extension): grouped-query attention, with key/value projections of
  ``num_kv_heads * head_dim`` rows; query head h reads key/value head ``h // (H // Hkv)``
  (SDPA's ``enable_gqa``; ``repeat_interleave`` where the weights are computed explicitly).

Masks follow ``nn.MultiheadAttention``: bool ``True`` = masked, floats are added
to the logits. SDPA's bool masks have the opposite polarity (``True`` = attend);
the conversion happens in one place, :meth:`SDPAMultiheadAttention._attend`.

Names: N batch, L query length, S key length (S' with the appended keys),
E embed_dim, H heads, Hkv key/value heads, hd = E // H head width, Ekv = Hkv * hd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Capabilities, DropIn


class SDPAMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with the attention computed by ``F.scaled_dot_product_attention``.

    With ``need_weights=False`` only SDPA runs (its fused kernels never build the
    (L, S) weights); with ``need_weights=True`` the weights are computed explicitly.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None, dtype=None,
                 num_kv_heads=None):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("kdim", kdim), ("vdim", vdim)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r}, but should be a positive int")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not isinstance(num_kv_heads, int) or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads!r}, but should be a positive int dividing "
                             f"num_heads={num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout={dropout!r}, but should be in [0, 1]")
        factory = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.num_kv_heads = num_kv_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        E, Ekv = embed_dim, num_kv_heads * self.head_dim
        if self._qkv_same_embed_dim:  # one packed [W_q; W_k; W_v]: E + 2 Ekv rows
            self.in_proj_weight = nn.Parameter(torch.empty(E + 2 * Ekv, E, **factory))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(E, E, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(Ekv, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(Ekv, self.vdim, **factory))
        if bias:  # packed [b_q; b_k; b_v], even with kdim/vdim
            self.in_proj_bias = nn.Parameter(torch.empty(E + 2 * Ekv, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(E, E, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, Ekv, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, Ekv, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self):
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

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """Arguments, shapes and results as ``nn.MultiheadAttention.forward``: ``(output, weights or None)``."""
        batched = self._check_inputs(query, key, value)
        q, k, v = self._project_heads(query, key, value)  # (N, H, L, hd), (N, Hkv, S, hd), (N, Hkv, S, hd)
        N, H, L, hd = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        if key_padding_mask is not None or attn_mask is not None:
            self._check_masks(key_padding_mask, attn_mask, batched, N, L, S)
        appended = int(self.bias_k is not None) + int(self.add_zero_attn)  # SDPA's flag would hide these keys too
        sdpa_causal = (is_causal and attn_mask is None and key_padding_mask is None and not need_weights
                       and not appended and L > 0 and S > 0)
        # The module under test merges its masks itself (here, in _merged_mask), on purpose: attnspec.masks is for adapters.
        if is_causal and not sdpa_causal:  # top-left aligned, as SDPA's is_causal, merged with the masks
            causal = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)  # (L, S)
            if attn_mask is None:
                attn_mask = causal
            elif attn_mask.dtype == torch.bool:
                attn_mask = attn_mask | causal  # (L, S) or (N*H, L, S)
            else:
                attn_mask = attn_mask.masked_fill(causal, float("-inf"))
        if self.bias_k is not None:  # one more key and value, appended along the sequence
            k = torch.cat([k, self.bias_k.view(1, Hkv, 1, hd).expand(N, Hkv, 1, hd)], dim=2)  # (N, Hkv, S+1, hd)
            v = torch.cat([v, self.bias_v.view(1, Hkv, 1, hd).expand(N, Hkv, 1, hd)], dim=2)
        if self.add_zero_attn:  # a zero key and a zero value per head, after the split
            k = torch.cat([k, k.new_zeros(N, Hkv, 1, hd)], dim=2)  # (N, Hkv, S'+1, hd)
            v = torch.cat([v, v.new_zeros(N, Hkv, 1, hd)], dim=2)
        mask = None  # no mask is built unless one is given
        if key_padding_mask is not None or attn_mask is not None:
            mask = self._merged_mask(key_padding_mask, attn_mask, N, L, S, k.shape[2] - S, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            G = H // Hkv  # query head h reads key/value head h // G
            k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (N, H, S', hd)
            heads, weights = self._explicit_attention(q, k, v, mask, dropout_p)  # (N, H, L, hd), (N, H, L, S')
        elif sdpa_causal:
            heads, weights = self._sdpa(q, k, v, None, dropout_p, is_causal=True), None  # SDPA's own flag
        else:
            heads, weights = self._sdpa(q, k, v, mask, dropout_p), None  # (N, H, L, hd)
        if batched and not self.batch_first:
            merged = heads.permute(2, 0, 1, 3).reshape(L, N, H * hd)  # (L, N, E): heads side by side
        else:
            merged = heads.transpose(1, 2).reshape(N, L, H * hd)  # (N, L, E): heads side by side
        Wo, bo = _parameters(self._modules["out_proj"], "weight", "bias")
        out = F.linear(merged, Wo, bo)  # the query's layout
        if not batched:
            out = out.squeeze(0)  # (L, E)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights  # (N, L, S') or (N, H, L, S')
            weights = weights if batched else weights.squeeze(0)
        return out, weights

    def _project_heads(self, query, key, value):
        """q, k, v projected and split into heads, as views; one matmul when query is key is value."""
        E = self.embed_dim
        w, b = _parameters(self, "in_proj_weight", "in_proj_bias")
        if self.num_kv_heads != self.num_heads:  # grouped-query: projections of E, Ekv, Ekv rows
            Ekv = self.num_kv_heads * self.head_dim
            wq, wk, wv = w.split([E, Ekv, Ekv]) if w is not None else _parameters(
                self, "q_proj_weight", "k_proj_weight", "v_proj_weight")
            bq, bk, bv = b.split([E, Ekv, Ekv]) if b is not None else (None, None, None)
            return tuple(self._split_heads(F.linear(x, wx, bx), 1, heads)[0] for x, wx, bx, heads in (
                (query, wq, bq, self.num_heads), (key, wk, bk, self.num_kv_heads), (value, wv, bv, self.num_kv_heads)))
        if w is not None and query is key and key is value:
            return self._split_heads(F.linear(query, w, b), 3)  # of one (..., 3E) product
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        if w is not None and key is value:  # e.g. an encoder memory: k and v from one (..., 2E) product
            (q,) = self._split_heads(F.linear(query, w[:E], bq), 1)
            k, v = self._split_heads(F.linear(key, w[E:], None if b is None else b[E:]), 2)
            return q, k, v
        wq, wk, wv = w.chunk(3) if w is not None else _parameters(self, "q_proj_weight", "k_proj_weight",
                                                                  "v_proj_weight")
        (q,), (k,), (v,) = (self._split_heads(F.linear(x, wx, bx), 1)
                            for x, wx, bx in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))
        return q, k, v

    def _split_heads(self, x, parts, heads=None):
        """(L, N, parts*E), (N, L, parts*E) or unbatched (L, parts*E) -> ``parts`` views (N, H, L, hd).

        Feature block h of each part is head h. No copy: SDPA takes the strided views. ``heads``:
        the number of heads in each part (default num_heads).
        """
        if x.dim() == 2:
            x = x.unsqueeze(0)  # (1, L, parts*E)
        elif not self.batch_first:
            x = x.transpose(0, 1)  # (N, L, parts*E)
        N, L = x.shape[0], x.shape[1]
        heads = x.view(N, L, parts, heads or self.num_heads, self.head_dim)  # (N, L, parts, H, hd)
        return heads.permute(2, 0, 3, 1, 4).unbind(0)  # parts x (N, H, L, hd)

    def _merged_mask(self, key_padding_mask, attn_mask, N, L, S, extra, dtype):
        """The given mask(s) as one, broadcastable to (N, H, L, S'), in MHA polarity.

        bool if every given mask is bool (True = masked), else float (added to the logits).
        The ``extra`` appended keys (bias_k, zero key) are always visible.
        """
        masks = []
        if attn_mask is not None:  # (L, S), or (N*H, L, S) indexed b*H + h
            masks.append(attn_mask.reshape(N, self.num_heads, L, S) if attn_mask.dim() == 3 else attn_mask)
        if key_padding_mask is not None:  # (N, S), or unbatched (S,)
            masks.append(key_padding_mask.reshape(N, 1, 1, S))
        if all(m.dtype == torch.bool for m in masks):
            merged = masks[0] if len(masks) == 1 else masks[0] | masks[1]
            return F.pad(merged, (0, extra), value=False) if extra else merged
        additive = [torch.zeros_like(m, dtype=dtype).masked_fill_(m, float("-inf")) if m.dtype == torch.bool
                    else m.to(dtype) for m in masks]
        merged = additive[0] if len(additive) == 1 else additive[0] + additive[1]
        return F.pad(merged, (0, extra), value=0.0) if extra else merged

    @staticmethod
    def _fully_masked(mask):
        """Rows with no visible key, (…, L, 1): they attend to nothing, by the spec's policy."""
        return mask.all(-1, keepdim=True) if mask.dtype == torch.bool else torch.isneginf(mask).all(-1, keepdim=True)

    @staticmethod
    def _attend(mask, empty):
        """The mask for SDPA, whose bool polarity is True = attend; empty rows opened so no backend sees them."""
        return ~mask | empty if mask.dtype == torch.bool else mask.masked_fill(empty, 0.0)

    def _sdpa(self, q, k, v, mask, dropout_p, is_causal=False):
        """Attention output (N, H, L, hd) by SDPA alone; empty rows are 0 whatever the backend does."""
        gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}  # k, v: (N, Hkv, S', hd)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, **gqa)
        empty = self._fully_masked(mask)
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attend(mask, empty), dropout_p=dropout_p,
                                               **gqa)
        return heads.masked_fill(empty, 0.0)  # (N, H, L, hd)

    def _explicit_attention(self, q, k, v, mask, dropout_p):
        """Attention output (N, H, L, hd) and the weights (N, H, L, S'), post-dropout as torch returns them."""
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (N, H, L, S')
        if mask is not None:
            empty = self._fully_masked(mask)
            masked = logits.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
            weights = torch.softmax(masked.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        else:
            weights = torch.softmax(logits, dim=-1)  # (N, H, L, S')
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        return weights @ v, weights  # (N, H, L, hd), (N, H, L, S')

    def _check_inputs(self, query, key, value) -> bool:
        """Raise ValueError naming the argument for inconsistent inputs; return whether they are batched."""
        dims = (query.dim(), key.dim(), value.dim())
        if dims != (3, 3, 3) and dims != (2, 2, 2):
            if dims[0] not in (2, 3):
                raise ValueError(f"query.dim()={dims[0]}, but should be 3 (batched) or 2 (unbatched)")
            name, dim = ("key", dims[1]) if dims[1] != dims[0] else ("value", dims[2])
            raise ValueError(f"{name}.dim()={dim}, but should be query.dim()={dims[0]}")
        for name, t, width in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != width:
                raise ValueError(f"{name}.shape[-1]={t.shape[-1]}, but should be {width}")
        batched = dims[0] == 3
        seq = 1 if batched and self.batch_first else 0
        if key.shape[seq] != value.shape[seq]:
            raise ValueError(f"key has {key.shape[seq]} positions and value has {value.shape[seq]}, "
                             f"but they should match (key.shape={tuple(key.shape)}, value.shape={tuple(value.shape)})")
        if batched and not (query.shape[1 - seq] == key.shape[1 - seq] == value.shape[1 - seq]):
            raise ValueError(f"batch sizes of query, key, value are {query.shape[1 - seq]}, {key.shape[1 - seq]}, "
                             f"{value.shape[1 - seq]}, but should be equal")
        return batched

    def _check_masks(self, key_padding_mask, attn_mask, batched, N, L, S):
        H = self.num_heads
        if key_padding_mask is not None:
            _check_mask_dtype("key_padding_mask", key_padding_mask)
            expected = (N, S) if batched else (S,)
            if tuple(key_padding_mask.shape) != expected:
                raise ValueError(f"key_padding_mask.shape={tuple(key_padding_mask.shape)}, but should be {expected}")
        if attn_mask is not None:
            _check_mask_dtype("attn_mask", attn_mask)
            per_head, rows = ((N * H, L, S), "N*H") if batched else ((H, L, S), "H")
            if tuple(attn_mask.shape) not in ((L, S), per_head):
                raise ValueError(f"attn_mask.shape={tuple(attn_mask.shape)}, but should be (L, S) = {(L, S)} "
                                 f"or ({rows}, L, S) = {per_head}")


def _parameters(module, *names):
    """``module``'s parameters by name, read from ``_parameters`` where they live.

    ``Module.__getattr__`` costs about 0.7 µs a lookup: six a call are 4% of the
    smallest benchmark shape. A reparametrised name (``torch.nn.utils.parametrize``,
    pruning) is not in ``_parameters`` and is read with ``getattr``.
    """
    table = module._parameters
    return [table[name] if name in table else getattr(module, name) for name in names]


def _check_mask_dtype(name, mask):
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"{name}.dtype={mask.dtype}, but should be torch.bool or a floating dtype")


SDPA = DropIn(SDPAMultiheadAttention, name="sdpa", capabilities=Capabilities(
    fully_masked_rows="zeros", causality="flag", causal_alignment="top-left", grouping="any"))
