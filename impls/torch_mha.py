"""Seed 004 ("pytorch笔记:nn.MultiheadAttention"): ``torch.nn.MultiheadAttention`` itself.

It needs no adapter code: :class:`attnspec.adapter.DropIn` reads its packed or
separate projections. It claims the full API and is certified against the
spec's fully-masked-row policy ("zeros": attention 0, output ``out_proj.bias``)
like any other implementation. What such a row gives in torch depends on the
code path (NaN with ``need_weights=True`` and on the fast path,
``out_proj.bias`` with ``need_weights=False``; research notes §0.2), so the
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
      for when in ({"key_padding_mask": True}, {"mask_3d": True})],
]

CAPABILITIES = Capabilities(fully_masked_rows="zeros", deviations=DEVIATIONS)

ADAPTER = DropIn(nn.MultiheadAttention, name="nn.MultiheadAttention", capabilities=CAPABILITIES)
