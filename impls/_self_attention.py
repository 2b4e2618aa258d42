"""What the self-attention-only seed adapters share: their limits, build and call."""
from __future__ import annotations

from attnspec.adapter import Adapter
from attnspec.capabilities import Capabilities

# One tensor in, no masks, no returned weights, no kdim/vdim or appended keys.
CAPABILITIES = Capabilities(
    cross_attention=False, kdim_vdim=False, bias_values=(True,), bias_kv=False, zero_attn=False,
    attention_dropout=False, layouts=("batch_first",), key_padding_mask_kinds=(), attn_mask_kinds=(), attn_mask_3d=False,
    returns_weights=False, returns_per_head_weights=False)


def self_attention_only(name, query, key, value, key_padding_mask, attn_mask) -> None:
    """Raise ValueError unless this is a plain self-attention call (one tensor, no masks)."""
    if key is not query or value is not query:
        raise ValueError(f"{name} is self-attention only: key and value must be the query tensor itself")
    for arg, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if mask is not None:
            raise ValueError(f"{name} takes no masks, but got {arg} of shape {tuple(mask.shape)}")


class SelfAttentionAdapter(Adapter):
    """Builds ``module_class(embed_dim, num_heads)`` and calls it on the query alone."""

    capabilities = CAPABILITIES
    module_class = None

    def build(self, config, *, dtype, device):
        return self.module_class(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        self_attention_only(self.name, query, key, value, key_padding_mask, attn_mask)
        return module(query), None
