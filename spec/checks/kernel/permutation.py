"""Structure: batch items are independent, and so are a varlen call's segments; query heads permute within their
groups."""
import torch
from hypothesis import assume

from ...kernel.problem import generator
from ...kernel.requirements import SEVERAL_HEADS, SEVERAL_ITEMS, SEVERAL_SEGMENTS, VARLEN
from ...kernel.varlen import segment_inputs
from ..registry import law


@law("permutation", SEVERAL_ITEMS, contract="kernel")
def kernel_batch_items_are_independent(case):
    """Each batch item's output equals a call on that item alone."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    exp = case.expected(x)
    one = p.replace(B=1)
    for b in range(p.B):
        slopes = x.alibi_slopes if x.alibi_slopes is None or x.alibi_slopes.dim() == 1 else x.alibi_slopes[b:b + 1]
        alone = x.replace(q=x.q[b:b + 1], k=x.k[b:b + 1], v=x.v[b:b + 1], alibi_slopes=slopes)  # (1, L, H, ·)
        out_b, _ = case.call(alone, one)
        case.assert_close(out_b[0], out[b], 2 * exp.out_tol, f"output of item {b} called alone", "in the batch",
                          spread_of=out)


def within_groups(p) -> list:
    """A permutation of the query heads that keeps each group of G = Hq / Hkv over one kv head: the kv heads
    reversed, and each group's query heads rotated by one (new head h reads old head perm[h])."""
    G = p.Hq // p.Hkv
    return [(p.Hkv - 1 - h // G) * G + (h % G + 1) % G for h in range(p.Hq)]


@law("permutation", SEVERAL_HEADS, contract="kernel")
def heads_permute_within_groups(case):
    """Permuting the kv heads, and the query heads within their groups with them (and the ALiBi slopes), permutes the output heads the same way."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    exp = case.expected(x)
    perm = within_groups(p)
    kv_perm = [p.Hkv - 1 - g for g in range(p.Hkv)]
    slopes = None if x.alibi_slopes is None else x.alibi_slopes[..., perm]
    moved = x.replace(q=x.q[:, :, perm], k=x.k[:, :, kv_perm], v=x.v[:, :, kv_perm], alibi_slopes=slopes)
    out2, _ = case.call(moved)
    case.assert_close(out2, out[:, :, perm], 2 * exp.out_tol, f"output with heads permuted {perm}",
                      "the output's heads permuted the same way", spread_of=out)



@law("permutation", VARLEN, contract="kernel")
def varlen_segments_equal_dense_calls(case):
    """Each segment of a varlen call equals the kernel's own dense call on that segment alone, zero-length segments included."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call_varlen(x)
    for name, rows, exp in case.expected_parts(x):
        b = int(name.split()[-1])
        alone, _ = case.call(segment_inputs(x, p, b), p.segment(b))  # (1, Lq_b, Hq, Dv)
        case.assert_close(out[rows], alone[0], 2 * exp.out_tol, f"output of {name} in the varlen call",
                          f"the dense call on {name} alone", spread_of=exp.out)


@law("permutation", VARLEN, SEVERAL_SEGMENTS, contract="kernel")
def segments_do_not_interact(case):
    """A segment's output and LSE stay bit-identical when every other segment's tokens (and the rows past cu_seqlens[-1]) change."""
    p = case.problem
    x = case.inputs()
    lse_claimed = {"return_lse": True} if case.adapter.capabilities.lse else {}
    out, lse = case.call_varlen(x, **lse_claimed)
    with_queries = [b for b in range(p.B) if p.seqlens_q[b]]
    assume(with_queries)
    b = with_queries[p.seed % len(with_queries)]
    q_rows, k_rows = slice(p.cu_q[b], p.cu_q[b + 1]), slice(p.cu_k[b], p.cu_k[b + 1])
    g = generator(p.seed, 11)
    fresh = lambda t: (4 * torch.randn(t.shape, generator=g, dtype=torch.float64)).to(t.device, t.dtype)  # noqa: E731
    changed = {}
    for name, rows in (("q", q_rows), ("k", k_rows), ("v", k_rows)):
        t = getattr(x, name)
        new = fresh(t)
        new[rows] = t[rows]  # segment b's own tokens stay
        changed[name] = new
    out2, lse2 = case.call_varlen(x.replace(**changed), **lse_claimed)
    case.assert_equal(out2[q_rows], out[q_rows], f"output of segment {b} after the other segments changed", "before")
    if lse is not None:
        case.assert_equal(lse2[:, q_rows], lse[:, q_rows], f"lse of segment {b} after the other segments changed",
                          "before")
