"""Keys placed by position: the causal diagonal and the window (aligned as declared), ALiBi."""
from ... import tolerances
from ...errors import Mismatch
from ...kernel.requirements import ALIBI, CAUSAL_UNEQUAL, WINDOW
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
