"""Seed 004 ("pytorch笔记:nn.MultiheadAttention"): ``torch.nn.MultiheadAttention`` itself.

It needs no adapter code: :class:`attnspec.adapter.DropIn` reads its packed or
separate projections. It claims the full API and is certified against the
spec's fully-masked-row policy ("zeros": attention 0, output ``out_proj.bias``)
like any other implementation. What such a row gives in torch depends on the
code path (NaN with ``need_weights=True`` and on the fast path,
``out_proj.bias`` with ``need_weights=False``; pytorch#160064), so the
laws it breaks are recorded below: they still run, must still fail, and show as
deviations in the results.
"""
from __future__ import annotations

from torch import nn

from attnspec.adapter import DropIn
from attnspec.capabilities import Capabilities

DEVIATIONS = [
    # The slow path with need_weights=True softmaxes an all -inf row into NaN, the
    # need_weights=False path (SDPA) gives zeros: the policy holds on one path only.
    dict(law="fully_masked_rows_follow_policy", when={"need_weights": True}, match=r"= nan, but should be",
         reason="NaN rows with need_weights=True (pytorch#160064, #40932); zeros with need_weights=False"),
    # out_proj mixes the heads, so one NaN head poisons the whole output row, and the
    # NaN reaches every parameter's gradient, also through the other batch items' loss.
    dict(law="fully_masked_rows_do_not_contaminate", when={"need_weights": True}, match=r"= nan, but should be",
         reason="one fully masked head makes the whole output row NaN with need_weights=True, and NaN "
                "gradients reach other batch items (pytorch#160064, #41508)"),
    # multi_head_attention_forward merges the key padding mask with
    # view(bsz, num_heads, -1, src_len): with src_len = 0 the -1 is ambiguous.
    *[dict(law="empty_sequences", when=when,
           match=r"S=0, need_weights=False\): call raised RuntimeError: cannot reshape tensor of 0 elements",
           reason="no keys (S = 0; in self-attention, no tokens at all) with a key_padding_mask or a 3-D "
                  "attn_mask and need_weights=False raise RuntimeError (cannot reshape tensor of 0 elements); "
                  "need_weights=True works (no issue found)")
      for when in ({"key_padding_mask_kind": True}, {"mask_3d": True})],
]

# is_causal, documented as "If specified, applies a causal mask as attention mask" (and as a hint that
# attn_mask is that mask), is certified as the flag it is documented to be (top-left, as SDPA's). What
# torch 2.13 does with it depends on the path (each deviation below says where): the slow path raises without
# an attn_mask, the fast path ignores it, and with an attn_mask it is either dropped or ignored.
NEED_MASK = r"call raised RuntimeError: Need attn_mask if specifying the is_causal hint"
CAUSAL_DEVIATIONS = [
    *[dict(law=law, when={"is_causal": True}, match=NEED_MASK,
           reason="is_causal=True without an attn_mask raises RuntimeError on the slow path (autograd on, an "
                  "odd head count, seq-first or unbatched input, cross-attention, training): torch treats the flag "
                  "as a hint that attn_mask is the causal mask and requires the mask (pytorch#99282 superseded)")
      for law in ("causal_flag_equals_causal_mask", "causal_flag_with_key_padding_mask",
                  "causal_flag_hides_the_future", "causal_flag_on_every_path", "causal_flag_with_more_queries_than_keys",
                  "dropout_inactive_in_eval", "dropout_in_training_masks_weights")],
    dict(law="causal_flag_on_every_path",
         when={"layout": "batch_first", "self_attention": True, "num_heads": [2, 4], "bias": True},
         match=r"^output \(need_weights=(True|False), eval mode, under torch\.(no_grad|inference_mode)\(\)",
         reason="on the fast path (eval, no autograd, batch_first self-attention, an even head count, biases) "
                "is_causal is ignored: the output silently attends to the future (no issue found)"),
    dict(law="causal_flag_with_attn_mask", when={"need_weights": False, "key_padding_mask_kind": False},
         reason="with need_weights=False and no key_padding_mask the attn_mask is discarded and SDPA gets "
                "is_causal=True: the output is causal attention alone (pytorch#131254)"),
    dict(law="causal_flag_hides_the_future", when={"attn_mask_kind": True}, match=r"^output\[rows ",
         reason="with an attn_mask (and need_weights=True or a key_padding_mask) the mask is used as given and "
                "the is_causal hint is ignored: later tokens reach earlier outputs (pytorch#99282)"),
    dict(law="causal_flag_with_attn_mask", when={"need_weights": True},
         reason="with need_weights=True the attn_mask is used as given and the is_causal hint is ignored: the "
                "output is not causal unless the mask already was (pytorch#99282)"),
    *[dict(law=law, when={"is_causal": True, "attn_mask_kind": True},
           reason="with an attn_mask torch takes is_causal as a hint that the mask is causal: the mask is used as "
                  "given or discarded (pytorch#99282, pytorch#131254), with dropout as without it")
      for law in ("dropout_inactive_in_eval", "dropout_in_training_masks_weights")],
]

CAPABILITIES = Capabilities(fully_masked_rows="zeros", deviations=DEVIATIONS + CAUSAL_DEVIATIONS, causality="flag",
                            causal_alignment="top-left")

ADAPTER = DropIn(nn.MultiheadAttention, name="nn.MultiheadAttention", capabilities=CAPABILITIES)
