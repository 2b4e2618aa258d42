"""Numerics: soft-capping, logits shifted far down, a cap too high to matter."""
import torch

from ... import tolerances
from ...kernel.reference import final_scores
from ...kernel.requirements import NO_SOFTCAP, SOFTCAP
from ..registry import law
from .positional import matches_or_says

SHIFT = -2.5e5  # FlashInfer's extreme logits (down to -2.45e5): below any finite "minus infinity" of a kernel


@law("numerics", SOFTCAP, contract="kernel")
def kernel_softcap_matches_reference(case):
    """softcap > 0 replaces each scaled score s by softcap * tanh(s / softcap), before ALiBi and the mask."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call(x)
    matches_or_says(case, out, x, [(p.replace(softcap=0.0), "without softcap: softcap is ignored")])


@law("numerics", SOFTCAP, contract="kernel")
def huge_softcap_equals_none(case):
    """A softcap 1e9 times the largest score gives the output without softcap."""
    p = case.problem.replace(softcap=0.0)
    x = case.inputs(p)
    exp = case.expected(x, p)
    scores = final_scores(p, x)
    finite = scores[torch.isfinite(scores)]
    huge = p.replace(softcap=1e9 * max(float(finite.abs().max()) if finite.numel() else 1.0, 1.0))
    out, _ = case.call(x, huge)
    case.assert_output(out, exp, f"output with softcap={huge.softcap:.3g}", "the reference without softcap")


@law("numerics", NO_SOFTCAP, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def logit_shift_changes_nothing(case):
    """Shifting every logit of a row by one constant, down to about -2.5e5, changes no output (the LSE moves by the constant)."""
    p = case.problem
    x = case.inputs()
    # Queries share a component a*u; every key gets beta*u added: row i's logits all move by
    # scale * beta * (q_i . u), about SHIFT (a = 2 is twice a query's typical component along u).
    u = torch.randn(p.D, generator=torch.Generator().manual_seed(p.seed), dtype=torch.float64)
    u = u / u.norm()
    a, beta = 2.0, SHIFT / (p.softmax_scale * 2.0)
    q = (x.q.double() + a * u).to(p.dtype)  # (B, Lq, Hq, D)
    k = (x.k.double() + beta * u).to(p.dtype)  # (B, Lk, Hkv, D)
    shifted = x.replace(q=q, k=k)
    out, lse = case.call(shifted, return_lse=True) if case.adapter.capabilities.lse else case.call(shifted)
    exp = case.expected(shifted)
    case.assert_output(out, exp, "output with every logit shifted near -2.5e5")
    if lse is not None:
        case.assert_lse(lse, exp, "lse with every logit shifted near -2.5e5")
