"""Equivalence of a kernel's output, LSE and gradients to the float64 reference."""
import math

import torch

from ... import tolerances
from ...errors import Mismatch
from ...kernel.requirements import BACKWARD, LSE
from ..registry import law


@law("equivalence", contract="kernel")
def kernel_output_matches_reference(case):
    """The output equals the float64 reference: every element within the bound, and the mean error within its own."""
    x = case.inputs()
    out, _ = case.call(x)
    case.assert_output(out, case.expected(x))


@law("equivalence", LSE, contract="kernel")
def lse_matches_reference(case):
    """The LSE is the natural-log log-sum-exp of each row's final scores, (B, Hq, Lq) float32; -inf where a query sees no key."""
    p = case.problem
    x = case.inputs()
    _, lse = case.call(x)
    exp = case.expected(x)
    try:
        case.assert_lse(lse, exp)
    except Mismatch as m:
        raise Mismatch(m.detail + _lse_diagnosis(case, lse, exp.lse, p, x), ratio=m.ratio) from None


def _lse_diagnosis(case, lse, ref, p, x) -> str:
    """What a wrong LSE looks like, when it matches a known mistake: base 2, the scale left out."""
    got, ref = lse.detach().double().cpu(), ref.double()
    ok = torch.isfinite(ref) & torch.isfinite(got) & (ref.abs() > 1e-3)
    if not bool(ok.any()):
        return ""
    ratio = float((got[ok] / ref[ok]).median())
    if abs(ratio - 1 / math.log(2)) < 1e-2:
        return (f"; the LSE is the reference times {ratio:.4f} = log2(e): a base-2 LSE (return the natural log, or "
                "declare lse_base='2')")
    unscaled = case.reference(x, p.replace(scale=1.0))[1]
    if torch.allclose(got[ok], unscaled[ok], rtol=1e-3, atol=1e-3):
        return "; the LSE equals the log-sum-exp of the unscaled scores q.k: the softmax scale is left out of it"
    return ""


@law("equivalence", BACKWARD, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def kernel_gradients_match_reference(case):
    """dq, dk and dv of sum(output * upstream) equal the reference's (a kv head's gradient summed over its query heads)."""
    case.assert_gradients_match(case.inputs())
