"""Grouped-query heads: equal to every kv head repeated for its group."""
from ...kernel.requirements import GROUPED
from ..registry import law


@law("head-split", GROUPED, contract="kernel")
def gqa_equals_repeated_kv(case):
    """With Hkv < Hq, the output equals the call with each kv head repeated for its Hq / Hkv query heads (query head h reads kv head h // (Hq / Hkv))."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    exp = case.expected(x)
    G = p.Hq // p.Hkv
    full = x.replace(k=x.k.repeat_interleave(G, dim=2), v=x.v.repeat_interleave(G, dim=2))  # (B, Lk, Hq, ·)
    out_full, _ = case.call(full, p.replace(Hkv=p.Hq))
    case.assert_close(out, out_full, 2 * exp.out_tol, f"output with Hkv={p.Hkv}",
                      f"the call with the kv heads repeated to {p.Hq} (h // {G}, not h % {p.Hkv})", spread_of=out)
