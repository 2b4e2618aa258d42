"""Keys placed by position: the causal diagonal and the window (aligned as declared), ALiBi, a cache step's rotary."""
from ... import tolerances
from ...errors import Mismatch
from ...kernel.requirements import ALIBI, CACHE_STEP, CAUSAL_UNEQUAL, ROTARY, WINDOW
from ..registry import law


def like(case, out, x, p) -> bool:
    """Whether ``out`` is within the output bound of the reference for problem ``p`` (for diagnoses)."""
    exp = case.expected(x, p)
    return tolerances.max_error(out, exp.out) <= exp.out_tol and bool(((out.double() - exp.out).isnan()).sum() == 0)


def matches_or_says(case, out, x, candidates) -> None:
    """``out`` equals the reference; if not, the failure names the first ``(problem, what it means)`` it matches."""
    exp = case.expected(x)
    try:
        case.assert_output(out, exp)
    except Mismatch as m:
        hint = next((what for q, what in candidates if like(case, out, x, q)), "")
        raise Mismatch(m.detail + (f"; it equals the reference {hint}" if hint else ""), ratio=m.ratio) from None


@law("positional", CAUSAL_UNEQUAL, contract="kernel")
def causal_alignment_matches_declared(case):
    """With causal=True and Lq != Lk, query i sees keys up to i + Lk - Lq (bottom-right; up to i where top-left is declared)."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    other = "top-left" if p.alignment == "bottom-right" else "bottom-right"
    matches_or_says(case, out, x, [(p.replace(alignment=other), f"with the causal diagonal {other}: declare "
                                                                 f"causal_alignment={other!r} if that is meant"),
                                   (p.replace(causal=False), "without the causal mask: causal=True is ignored")])


@law("positional", WINDOW, contract="kernel")
def window_matches_reference(case):
    """window_size=(left, right) shows query i the keys from i + Lk - Lq - left to i + Lk - Lq + right, both included (-1: unbounded)."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    left, right = p.window
    near = [((left + dl, right + dr), f"for window_size=({left + dl}, {right + dr}): off by one")
            for dl, dr in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1))
            if left + dl >= (0 if left >= 0 else -1) and right + dr >= (0 if right >= 0 else -1)
            and (left + dl, right + dr) != (-1, -1)]
    other = "top-left" if p.alignment == "bottom-right" else "bottom-right"
    matches_or_says(case, out, x, [(p.replace(window=w), why) for w, why in near if w[0] >= -1 and w[1] >= -1]
                    + [(p.replace(alignment=other), f"with the window aligned {other}"),
                       (p.replace(window=None), "without the window: window_size is ignored")])


@law("positional", ALIBI, contract="kernel")
def kernel_alibi_matches_reference(case):
    """ALiBi slopes, (Hq,) or (B, Hq) float32, add -slope * abs(i + Lk - Lq - j) to the score of query i and key j, before the mask."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    other = "top-left" if p.alignment == "bottom-right" else "bottom-right"
    matches_or_says(case, out, x, [(p.replace(alignment=other), f"with ALiBi's distances measured {other}"),
                                   (p.replace(alibi=None), "without ALiBi: alibi_slopes is ignored")])


def parts_like(case, out, x, p) -> bool:
    """Whether every item of a cache step's ``out`` is within the output bound of the reference for problem ``p``."""
    return all(tolerances.max_error(out[b:b + 1], exp.out) <= exp.out_tol for _, b, exp in case.expected_parts(x, p))


@law("positional", CACHE_STEP, ROTARY, contract="kernel")
def rotary_matches_reference(case):
    """rotary_cos/sin turn new key j of item b at cache_seqlens[b] + j and query i at cache_seqlens[b] + i, pairs as rotary_interleaved says."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call_cache(x)
    try:
        case.assert_parts(out, None, case.expected_parts(x))
    except Mismatch as m:
        other = "rotate_half" if p.rotary == "interleaved" else "interleaved"
        queries = "per-token" if p.rotary_queries == "flash-attn" else "flash-attn"
        candidates = [(p.replace(rotary=other), f"with {other} pairs: rotary_interleaved={p.rotary != 'interleaved'} "
                                                "is read the other way"),
                      (p.replace(rotary_queries=queries), "with the queries turned as " + (
                          "flash-attn does (all at cache_seqlens when neither causal nor windowed): declare "
                          "rotary_queries='flash-attn' if that is meant" if queries == "flash-attn" else
                          "the contract says (at cache_seqlens + i)")),
                      (p.replace(rotary=None), "without rotary: rotary_cos and rotary_sin are ignored")]
        hint = next((what for q, what in candidates if parts_like(case, out, x, q)), "")
        raise Mismatch(m.detail + (f"; it equals the reference {hint}" if hint else ""), ratio=m.ratio) from None
