"""Head split: heads are independent feature blocks, merged by the output projection.

With grouped-query and multi-query attention, fewer key/value heads are each shared by a group of query
heads: query head h reads key/value head ``h // G`` with G = num_heads // num_kv_heads, the groups being
consecutive query heads (``repeat_interleave``). Reading ``h % num_kv_heads`` instead (what
``kv.repeat(1, G, 1, 1)`` gives) is a classic porting bug these laws catch.
"""
import torch

from .. import reference, tolerances
from ..case import positional
from ..inputs import generator
from ..requirements import (GROUPED, GROUPED_OR_NOT, HEADS_SPLIT_BEFORE_NORM, NO_HEAD_MIXING, PER_HEAD_WEIGHTS,
                            PER_HEAD_WEIGHTS_DRAWN, SEVERAL_HEADS)
from ..transforms import randperm
from ..weights import group_permutation, permute_heads
from .registry import law


@law("head-split", NO_HEAD_MIXING, HEADS_SPLIT_BEFORE_NORM)
def output_is_concatenation_of_heads(case):
    """The output equals the per-head attentions (head h = feature block h), concatenated, then projected by Wo."""
    p = case.problem
    module, inputs, out, _ = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    cast = lambda t: None if t is None else t.detach().cpu().to(torch.float64 if t.is_floating_point() else t.dtype)  # noqa: E731
    heads = reference.per_head_attention(
        cast(inputs.query), cast(inputs.key), cast(inputs.value), weights, num_heads=p.config.num_heads,
        key_padding_mask=cast(inputs.key_padding_mask), attn_mask=cast(inputs.attn_mask),
        batch_first=p.config.batch_first, add_zero_attn=p.config.add_zero_attn, **positional(p))
    case.assert_close(out, heads, exp.output_tol, "output", "the concatenated per-head attentions")


@law("head-split", SEVERAL_HEADS)
def head_permutation_invariance(case):
    """Permuting the heads in the weights (and 3-D mask rows) leaves the output unchanged and permutes per-head weights.

    Without an output projection the output's head blocks move with the heads instead."""
    p = case.problem
    H = p.config.num_heads
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    if p.config.kv_heads == H:
        perm, kv_perm = randperm(H, p.seed), None
    else:  # grouped-query attention: query heads move with their key/value head
        perm, kv_perm = group_permutation(H, p.config.kv_heads, generator(p.seed, 6))
    moved = case.build(weights=permute_heads(weights, perm, H, kv_perm))
    changed = inputs
    if inputs.attn_mask is not None and inputs.attn_mask.dim() == 3:
        rows = (torch.arange(p.B)[:, None] * H + perm[None, :]).reshape(-1)  # (B*H,): row b*H + perm[h]
        changed = inputs.replace(attn_mask=inputs.attn_mask[rows.to(inputs.attn_mask.device)])
    out2, w2 = case.call(moved, changed)
    if weights.Wo is None:  # no output projection to merge the heads back: the output's blocks move with them
        hd = p.config.head_dim
        out = out[..., (perm[:, None] * hd + torch.arange(hd)).reshape(-1).to(out.device)]  # (…, E): block i = perm[i]
    case.assert_close(out2, out, 2 * exp.output_tol, "output with permuted heads", "before the permutation")
    if w is not None:
        want = w if p.average_attn_weights else w[..., perm.to(w.device), :, :]
        case.assert_close(w2, want, 2 * exp.weights_tol, "weights with permuted heads", "the permuted weights")


@law("head-split", PER_HEAD_WEIGHTS, dtypes=tolerances.HIGH_PRECISION)
def averaged_weights_are_head_mean(case):
    """Weights averaged over heads equal the mean of the per-head weights."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    exp = case.expected(inputs, case.weights_of(module), p.replace(average_attn_weights=True))
    _, avg = case.call(module, inputs, average_attn_weights=True)
    _, per = case.call(module, inputs, average_attn_weights=False)
    head_axis = 1 if p.batched else 0
    case.assert_shape(per, tuple(avg.shape[:head_axis]) + (p.config.num_heads,) + tuple(avg.shape[head_axis:]),
                      "per-head weights")
    case.assert_close(avg, per.double().mean(head_axis), 2 * exp.weights_tol, "averaged weights",
                      "the mean of the per-head weights")


def _repeat_heads(t, num_kv_heads: int, G: int):
    """Rows of ``num_kv_heads`` head blocks, each block repeated G times in place: (Hkv*hd, ...) -> (Hkv*G*hd, ...)."""
    if t is None:
        return None
    blocks = t.reshape(num_kv_heads, t.shape[0] // num_kv_heads, *t.shape[1:])  # (Hkv, hd, ...)
    return blocks.repeat_interleave(G, dim=0).reshape(G * t.shape[0], *t.shape[1:])  # (H*hd, ...)


@law("head-split", GROUPED_OR_NOT)
def grouped_kv_equals_repeated_heads(case):
    """Grouped-query attention equals full multi-head attention whose key/value weights are the grouped ones repeated per group."""
    p = case.problem
    H, Hkv = p.config.num_heads, p.config.kv_heads
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    G = H // Hkv
    full = p.with_config(num_kv_heads=H)
    names = ("Wk", "Wv", "bk", "bv", "bias_k", "bias_v")
    if p.qk_norm is not None and p.qk_norm.over == "all":  # k_norm (Ekv,): one weight per feature of all of k
        names += ("k_norm",)  # the mean square of k repeated per group is that of k: the weights repeat with it
    repeated = weights.replace(**{n: _repeat_heads(getattr(weights, n), Hkv, G) for n in names})
    out2, w2 = case.call(case.build(full, weights=repeated), inputs, full)
    what = f"{H} key/value heads, each the grouped head read by that query head"
    case.assert_close(out, out2, 2 * exp.output_tol, f"output with num_kv_heads={Hkv}", f"with {what}")
    if w is not None:
        case.assert_close(w, w2, 2 * exp.weights_tol, f"weights with num_kv_heads={Hkv}", f"with {what}")


@law("head-split", GROUPED)
def query_heads_permute_within_group(case):
    """Permuting the query heads within each group (their Wq rows and Wo columns) leaves the output unchanged and permutes per-head weights."""
    p = case.problem
    H, Hkv = p.config.num_heads, p.config.kv_heads
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    perm, kv_perm = group_permutation(H, Hkv, generator(p.seed, 6), within_groups_only=True)
    changed = inputs
    if inputs.attn_mask is not None and inputs.attn_mask.dim() == 3:  # per-head mask rows move with their heads
        rows = (torch.arange(p.B)[:, None] * H + perm[None, :]).reshape(-1)  # (B*H,): row b*H + perm[h]
        changed = inputs.replace(attn_mask=inputs.attn_mask[rows.to(inputs.attn_mask.device)])
    out2, w2 = case.call(case.build(weights=permute_heads(weights, perm, H, kv_perm)), changed)
    what = f"query heads permuted within their groups as {perm.tolist()} (num_kv_heads={Hkv})"
    if weights.Wo is None:  # no output projection to merge the heads back: the output's blocks move with them
        hd = p.config.head_dim
        out = out[..., (perm[:, None] * hd + torch.arange(hd)).reshape(-1).to(out.device)]  # (…, E)
    case.assert_close(out2, out, 2 * exp.output_tol, f"output with {what}", "before the permutation")
    if w is not None:
        want = w if p.average_attn_weights else w[..., perm.to(w.device), :, :]
        case.assert_close(w2, want, 2 * exp.weights_tol, f"weights with {what}", "the permuted weights")


@law("head-split", GROUPED, PER_HEAD_WEIGHTS_DRAWN)
def per_head_weights_count_query_heads(case):
    """Per-head weights have one row per query head (num_heads, not num_kv_heads), each the reference's."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    _, w = case.call(module, inputs)
    exp = case.expected(inputs, case.weights_of(module))
    case.assert_close(w, exp.weights, exp.weights_tol,
                      f"per-head weights (num_heads={p.config.num_heads}, num_kv_heads={p.config.kv_heads})")
