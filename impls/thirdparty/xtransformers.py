"""``x_transformers.Attention`` (the ``x-transformers`` package, certified with 2.31.10).

Built as ``Attention(dim=E, dim_head=E // H, heads=H, dropout=p, add_zero_kv=...,
num_mem_kv=..., project_out=True)`` and called in its default, non-flash path
(``Attend``'s einsum + softmax), which returns the attention through
``return_intermediates=True``. Bias-free projections ``to_q``, ``to_k``, ``to_v``,
``to_out`` (``LinearNoBias``), so only ``bias=False`` is claimed.

How ``nn.MultiheadAttention``'s arguments map onto it:

* ``add_zero_attn`` -> ``add_zero_kv=True`` ("same as add_zero_attn in pytorch", its
  docstring), and ``add_bias_kv`` -> ``num_mem_kv=1``: one learned memory key and value
  per head, ``mem_k``/``mem_v`` (H, 1, hd), which are ``bias_k``/``bias_v`` reshaped.
  Both are *prepended* to the keys (zero first, then memory), where torch appends
  them, so the returned weight columns are moved to torch's order
  (real keys, ``bias_k``, zero key): a reordering only.
* bool masks keep the opposite polarity (``True`` = attend): ``key_padding_mask`` ->
  ``context_mask=~key_padding_mask`` (``mask=`` would also zero the output rows of
  padded *queries*, which torch does not do); ``attn_mask`` -> ``attn_mask=~attn_mask``,
  (L, S) or, for a 3-D mask, (B, H, L, S). A user ``attn_mask`` is not widened for the
  memory key, so the adapter prepends a visible column when ``add_bias_kv``.
* float masks -> ``attn_bias``, the additive logit bias (its ALiBi / relative-position
  input): (B, 1, 1, S) plus (L, S) or (B, H, L, S), with the same visible column for
  the memory key.
* ``key``/``value``: the module takes one ``context`` for both keys and values, so
  distinct key and value tensors cannot be expressed; it is certified as self-attention.
"""
from __future__ import annotations

import torch
from x_transformers import Attention

from attnspec import from_linears, masks, to_linears
from attnspec.adapter import Adapter, copy_
from attnspec.capabilities import Capabilities
from attnspec.weights import CanonicalWeights

from ._common import check_config, check_mask_dtypes, keys_are_values, returned_weights


class XTransformersAttentionAdapter(Adapter):
    name = "xtransformers.Attention"
    capabilities = Capabilities(
        shared_key_value=True,  # `context` feeds both to_k and to_v: keys are values
        kdim_vdim=False, bias_values=(False,), layouts=("batch_first",),
        fully_masked_rows="zeros",  # Attend zeroes the output of a row its bool masks fully mask
        # Attend's softmax runs in float32 (attn_fn = partial(softmax, dtype=torch.float32)): float64
        # results carry float32 rounding (|error| ~1e-8), so float64 is held to float32's tolerance
        compute_dtype=torch.float32,
        # Attention(dim, heads, dim_head): configured by head width, so no indivisible embed_dim can be given
        embed_dim_and_heads=False,
        deviations=[
            dict(law="fully_masked_rows_follow_policy", when={"fully_masked": True},
                 reason="a row fully masked by bool masks has output 0 (Attend zeroes it: row_is_entirely_masked), "
                        "as the policy says, but its returned weights are uniform 1/S over the masked keys, not 0 "
                        "(masked logits are filled with -finfo.max, not -inf); a row fully masked by a float mask "
                        "(attn_bias, -inf) is NaN"),
            dict(law="fully_masked_rows_do_not_contaminate", when={"fully_masked": True},
                 match=r"= nan, but should be",
                 reason="Attend zeroes fully masked rows only for its bool masks; a float mask (attn_bias, where "
                        "the adapter also puts a float key_padding_mask) with "
                        "-inf on every key of a row softmaxes to NaN, the row's output is NaN and the NaN reaches "
                        "every weight's gradient, also from a loss on the other rows"),
            *[dict(law="rejects_wrong_mask_shape", when=when, match="returned normally",
                   reason="masks are broadcast against the logits, not checked: with one key (S=1) a key padding "
                          "mask (context_mask) of shape (B, 2) is accepted, and with one query (L=1) an attn_mask "
                          "of shape (2, S) returns an output of 2 rows; longer sequences raise a RuntimeError")
              for when in ({"S": 1, "key_padding_mask_kind": True}, {"L": 1, "key_padding_mask_kind": False})],
            dict(law="dropout_in_training_masks_weights", when={"training": True},
                 reason="the returned attention (intermediates.post_softmax_attn) is taken before the dropout; "
                        "the output is computed from the dropped-out weights, which are not returned"),
        ])

    def build(self, config, *, dtype, device):
        check_config(self.name, config, add_bias_kv=True, add_zero_attn=True, bias=(False,))
        E, H = config.embed_dim, config.num_heads
        if E % H:  # dim_head * heads is the inner width here: E = H * dim_head has no x-transformers equivalent
            raise ValueError(f"{self.name}: embed_dim={E} is not divisible by num_heads={H} "
                             "(the inner width is heads * dim_head)")
        module = Attention(dim=E, dim_head=E // H, heads=H, dropout=config.dropout,
                           add_zero_kv=config.add_zero_attn, num_mem_kv=int(config.add_bias_kv),
                           project_out=True)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        context = keys_are_values(self.name, query, key, value)
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, H, mem = query.shape[0], module.heads, module.num_mem_kv
        # Sizes unchecked (None): a mask of the wrong size must reach the module, which claims to reject it.
        sizes = dict(batch=B, num_heads=H, queries=None, keys=None)
        bools = [m if m is not None and m.dtype == torch.bool else None for m in (key_padding_mask, attn_mask)]
        floats = [m if m is not None and m.is_floating_point() else None for m in (key_padding_mask, attn_mask)]
        kwargs = {}
        if bools[0] is not None:  # the module merges its context_mask with its attn_mask itself
            kwargs["context_mask"] = masks.keep(bools[0])  # (B, S), True = attend
        if bools[1] is not None:  # the memory key, prepended, stays visible
            am = masks.heads_unfolded(bools[1], **sizes)  # (1|B, 1|H, L, S)
            kwargs["attn_mask"] = masks.keep(masks.with_visible_keys(am, mem, first=True))  # (1|B, 1|H, L, mem + S)
        bias = masks.combined(*floats, **sizes)  # (B|1, H|1, L|1, S): the float masks summed, or None
        if bias is not None:
            kwargs["attn_bias"] = masks.with_visible_keys(bias, mem, first=True)  # (B|1, H|1, L|1, mem + S)
        if not need_weights:
            return module(query, context=context, **kwargs), None
        out, intermediates = module(query, context=context, return_intermediates=True, **kwargs)
        w = intermediates.post_softmax_attn  # (B, H, L, [zero] + [memory] + S)
        zero = int(module.attend.add_zero_kv)
        lead = zero + mem
        cols = list(range(lead, w.shape[-1])) + list(range(zero, lead)) + list(range(zero))
        return out, returned_weights(w[..., cols], True, average_attn_weights)

    def get_weights(self, module) -> CanonicalWeights:
        mem = module.num_mem_kv > 0
        return from_linears(  # LinearNoBias projections: no biases
            module.to_q, module.to_k, module.to_v, module.to_out,
            bias_k=module.mem_k.reshape(-1) if mem else None,  # (H, 1, hd) -> (E,), head h = block h
            bias_v=module.mem_v.reshape(-1) if mem else None)

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, module.to_q, module.to_k, module.to_v, module.to_out)
        if module.num_mem_kv > 0:
            copy_(module.mem_k, weights.bias_k.reshape(module.mem_k.shape))
            copy_(module.mem_v, weights.bias_v.reshape(module.mem_v.shape))


ADAPTER = XTransformersAttentionAdapter()
ADAPTER.origin = f"{__name__}:ADAPTER"
