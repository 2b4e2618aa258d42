"""Grouped-query and multi-query attention: fewer key/value heads, each shared by a group of query heads.

Query head h reads key/value head ``h // G`` with G = num_heads // num_kv_heads: the groups are
consecutive query heads (``repeat_interleave``). Reading ``h % num_kv_heads`` instead (what
``kv.repeat(1, G, 1, 1)`` gives) is a classic porting bug these laws catch.
"""
import torch

from ..inputs import generator
from ..weights import group_permutation, permute_heads
from .registry import law


def _repeat_heads(t, num_kv_heads: int, G: int):
    """Rows of ``num_kv_heads`` head blocks, each block repeated G times in place: (Hkv*hd, ...) -> (Hkv*G*hd, ...)."""
    if t is None:
        return None
    blocks = t.reshape(num_kv_heads, t.shape[0] // num_kv_heads, *t.shape[1:])  # (Hkv, hd, ...)
    return blocks.repeat_interleave(G, dim=0).reshape(G * t.shape[0], *t.shape[1:])  # (H*hd, ...)


@law("head-split", needs=("num_kv_heads",), grouped=True)
def grouped_kv_equals_repeated_heads(case):
    """Grouped-query attention equals full multi-head attention whose key/value weights are the grouped ones repeated per group."""
    p = case.problem
    H, Hkv = p.config.num_heads, p.config.kv_heads
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    G = H // Hkv
    full = p.with_config(num_kv_heads=H)
    repeated = weights.replace(**{n: _repeat_heads(getattr(weights, n), Hkv, G) for n in ("Wk", "Wv", "bk", "bv", "bias_k", "bias_v")})
    out2, w2 = case.call(case.build(full, weights=repeated), inputs, full)
    what = f"{H} key/value heads, each the grouped head read by that query head"
    case.assert_close(out, out2, 2 * exp.output_tol, f"output with num_kv_heads={Hkv}", f"with {what}")
    if w is not None:
        case.assert_close(w, w2, 2 * exp.weights_tol, f"weights with num_kv_heads={Hkv}", f"with {what}")


@law("head-split", needs=("num_kv_heads",), grouped=True)
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


@law("head-split", needs=("num_kv_heads", "per-head weights"), grouped=True, need_weights=True,
     average_attn_weights=False)
def per_head_weights_count_query_heads(case):
    """Per-head weights have one row per query head (num_heads, not num_kv_heads), each the reference's."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    _, w = case.call(module, inputs)
    exp = case.expected(inputs, case.weights_of(module))
    case.assert_close(w, exp.weights, exp.weights_tol,
                      f"per-head weights (num_heads={p.config.num_heads}, num_kv_heads={p.config.kv_heads})")
