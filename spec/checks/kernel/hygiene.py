"""Hygiene: inputs untouched, nothing read or written outside them, repeatable results, options that act."""
import torch

from ... import tolerances
from ...errors import Mismatch
from ...kernel.requirements import AN_OPTION, DETERMINISTIC_BACKWARD
from ..registry import law


@law("hygiene", contract="kernel")
def kernel_inputs_not_modified(case):
    """q, k, v and alibi_slopes are bit-identical after the call, and after backward where it is claimed."""
    caps = case.adapter.capabilities
    x = case.inputs()
    before = {n: t.clone() for n, t in x.tensors().items()}
    if caps.backward:
        case.gradients(x, case.upstream())
    else:
        case.call(x)
    for name, saved in before.items():
        case.assert_equal(getattr(x, name), saved, f"{name} after the call", "before the call")


PAD = 7  # guard elements on each side of a tensor placed inside a larger buffer


def _inside(t):
    """``t``'s values in the middle of a NaN buffer: ``(view, buffer)``, the view with ``t``'s shape and strides."""
    buffer = torch.full((t.numel() + 2 * PAD,), float("nan"), dtype=t.dtype, device=t.device)
    view = buffer[PAD:PAD + t.numel()].view(t.shape)
    view.copy_(t)
    return view, buffer


@law("hygiene", contract="kernel")
def no_access_outside_tensors(case):
    """Inputs inside larger NaN buffers give the reference output, and the elements around them stay bit-identical: nothing is read or written past a tensor."""
    x = case.inputs()
    placed = {n: _inside(getattr(x, n)) for n in "qkv"}
    guards = {n: torch.cat([b[:PAD], b[-PAD:]]).clone() for n, (_, b) in placed.items()}
    out, _ = case.call(x.replace(**{n: view for n, (view, _) in placed.items()}))
    for n, (_, buffer) in placed.items():
        case.assert_equal(torch.cat([buffer[:PAD], buffer[-PAD:]]), guards[n],
                          f"the {PAD} elements before and after {n} in its buffer", "before the call (NaN)")
    case.assert_output(out, case.expected(x), "output with inputs inside NaN buffers")


@law("hygiene", contract="kernel")
def forward_is_bitwise_repeatable(case):
    """Two calls with the same inputs give bit-identical outputs (and LSEs, where claimed)."""
    x = case.inputs()
    lse_claimed = {"return_lse": True} if case.adapter.capabilities.lse else {}
    out, lse = case.call(x, **lse_claimed)
    out2, lse2 = case.call(x, **lse_claimed)
    case.assert_equal(out2, out, "output of the second call", "the first call")
    if lse is not None:
        case.assert_equal(lse2, lse, "lse of the second call", "the first call")


@law("hygiene", DETERMINISTIC_BACKWARD, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def deterministic_backward(case):
    """Two backward passes on the same inputs give bit-identical dq, dk and dv."""
    x = case.inputs()
    upstream = case.upstream()
    first, second = case.gradients(x, upstream), case.gradients(x, upstream)
    for name, g in first.items():
        case.assert_equal(second[name], g, f"{name} of the second backward", "the first")


def single_options(p, caps) -> list:
    """``(name, problem with that option alone)`` for each option claimed, at a value with a clear effect (on at
    least 2 queries and 3 keys, where the declared lengths allow)."""
    Lq, Lk = max(p.Lq, 2), max(p.Lk, 3)
    Lq, Lk = min(Lq, caps.max_seqlen_q or Lq), min(Lk, caps.max_seqlen_k or Lk)
    plain = p.replace(causal=False, window=None, softcap=0.0, scale=None, alibi=None, Lq=Lq, Lk=Lk)
    options = [("causal", caps.causal, plain.replace(causal=True)),
               ("softmax_scale", caps.softmax_scale, plain.replace(scale=3.0 * p.D ** -0.5)),
               ("window_size", caps.window, plain.replace(window=(0, 1))),
               ("softcap", caps.softcap, plain.replace(softcap=0.5)),
               ("alibi_slopes", caps.alibi, plain.replace(alibi="heads"))]
    return [(name, q) for name, claimed, q in options if claimed]


@law("hygiene", AN_OPTION, contract="kernel")
def options_take_effect(case):
    """Each claimed option alone (causal, softmax_scale, window_size, softcap, alibi_slopes) changes the output as the reference says: none is ignored."""
    p, caps = case.problem, case.adapter.capabilities
    for name, q in single_options(p, caps):
        plain = q.replace(causal=False, window=None, softcap=0.0, scale=None, alibi=None)
        x = case.inputs(q)
        exp = case.expected(x, q)
        without = case.expected(x, plain)
        if tolerances.max_error(without.out, exp.out) <= 2 * exp.out_tol:
            continue  # the option does nothing here (one key, say): nothing to tell apart
        out, _ = case.call(x, q)
        try:
            case.assert_output(out, exp, f"output with {name} alone")
        except Mismatch as m:
            ignored = tolerances.max_error(out, without.out) <= exp.out_tol
            raise Mismatch(m.detail + (f"; it equals the output without {name}: the option is accepted and ignored"
                                       if ignored else ""), ratio=m.ratio) from None
