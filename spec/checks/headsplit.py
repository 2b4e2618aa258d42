"""Head split: heads are independent feature blocks, merged by the output projection."""
import torch

from .. import reference, tolerances
from ..case import positional
from ..inputs import generator
from ..weights import group_permutation, permute_heads
from ..transforms import randperm
from .registry import law


@law("head-split", needs=("no head mixing",))
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


@law("head-split", needs=("several heads",), min_heads=2)
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


@law("head-split", needs=("per-head weights",), dtypes=tolerances.HIGH_PRECISION, need_weights=True)
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
