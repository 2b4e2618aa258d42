"""Structure: batch items are independent; query heads permute within their groups."""


from ...kernel.requirements import SEVERAL_HEADS, SEVERAL_ITEMS
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

