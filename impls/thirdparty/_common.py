"""Helpers shared by the third-party adapters: argument checks and weight layouts.

Names: B batch, L query length, S key length (S' with appended keys), E embed_dim,
H heads. Masks arrive in ``nn.MultiheadAttention``'s polarity (bool ``True`` =
masked, floats added to the logits); each adapter converts them to its module's own
form in one place, with :mod:`attnspec.masks`.
"""
from __future__ import annotations

import torch


def check_config(name: str, config, *, kdim_vdim=False, add_bias_kv=False, add_zero_attn=False,
                 dropout=True, bias=(True, False)) -> None:
    """Raise ValueError for a configuration the module cannot represent."""
    unsupported = [
        (not kdim_vdim and (config.kdim is not None or config.vdim is not None), "kdim/vdim"),
        (config.qdim is not None, "qdim"),
        (not add_bias_kv and config.add_bias_kv, "add_bias_kv"),
        (not add_zero_attn and config.add_zero_attn, "add_zero_attn"),
        (not dropout and config.dropout > 0, f"dropout={config.dropout}"),
        (config.bias not in bias, f"bias={config.bias}"),
    ]
    bad = [what for failed, what in unsupported if failed]
    if bad:
        raise ValueError(f"{name} does not support {', '.join(bad)}")


def check_mask_dtypes(name: str, key_padding_mask, attn_mask) -> None:
    """Only bool masks (True = masked) and floating masks (added) have a meaning."""
    for arg, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if mask is not None and not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"{name}: {arg} has dtype {mask.dtype}, but should be bool (True = masked) "
                            "or floating (added to the logits)")


def keys_are_values(name: str, query, key, value):
    """The module's one key/value input: None for self-attention (query is key is value), else ``key``.

    Raises ValueError unless ``value is key`` (the module takes one tensor for both: shared_key_value)."""
    if value is not key:
        raise ValueError(f"{name} takes one tensor as keys and values: value must be the key tensor itself")
    return None if key is query else key


def returned_weights(w, need_weights: bool, average_attn_weights: bool):
    """Per-head weights (B, H, L, S') as nn.MultiheadAttention returns them: averaged, per head, or None."""
    if not need_weights:
        return None
    return w.mean(dim=1) if average_attn_weights else w
