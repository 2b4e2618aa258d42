"""Numerics: weights are probabilities; large inputs do not overflow."""
import torch

from .. import tolerances
from ..requirements import LARGE_INPUTS, NO_SINKS, RETURNS_WEIGHTS, SINKS
from .registry import law


@law("numerics", RETURNS_WEIGHTS, NO_SINKS)
def weights_form_a_simplex(case):
    """Returned weights are non-negative and each row sums to one over all keys, appended ones included."""
    p = case.problem
    module, inputs, _, w = case.run()
    weights = case.weights_of(module)
    if bool((w < 0).any()):
        idx = tuple((w < 0).nonzero()[0].tolist())
        case.fail(f"weights[{', '.join(map(str, idx))}] = {w[idx].item():.6g}, but should be >= 0")
    sums = w.detach().to("cpu", torch.float64).sum(-1)  # on the CPU, where the float64 reference is
    # the bound of the sums themselves: a plain same-dtype softmax's row sums against exactly one
    plain, _ = tolerances.baseline_dtype(case.tol_dtype)
    _, plain_w = case.reference(inputs, weights, dtype=plain)
    ones = torch.ones_like(sums)
    tol = tolerances.bound("weights", case.tol_dtype, ones, [plain_w.double().sum(-1)],
                           terms=tolerances.reduction_length(p, "weights"),
                           logits=tolerances.magnitude(case.logits(inputs, weights)))
    case.assert_close(sums, ones, tol, "row sums of weights", "one")


@law("numerics", LARGE_INPUTS, severity="edge")
def large_inputs_stay_finite(case):
    """With large inputs (logits in the hundreds in float64 and float32) the output is finite and equals the reference."""
    p = case.problem
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    if not bool(torch.isfinite(out).all()):  # overflow only if the same call with unit inputs is finite
        unit = p.replace(input_scale=1.0)
        out1, _ = case.call(module, case.inputs(unit), unit)
        case.assert_finite(out1, "output with unit inputs (input_scale=1)",
                           "the reference is finite; the module gives a non-finite output at input_scale="
                           f"{p.input_scale:g} and at 1 alike, so it is not an overflow of large logits (a row or "
                           "block of keys all at -inf, a 0/0?)")
        case.assert_finite(out, f"output at input_scale={p.input_scale:g}",
                           "the reference is finite and so is the output with unit inputs, so the computation "
                           "overflows (softmax without subtracting the row max, or scaling after the product in "
                           "low precision?)")
    case.assert_close(out, exp.output, exp.output_tol, "output")


@law("numerics", SINKS)
def sinks_take_attention_without_value(case):
    """Each head's sink logit joins its rows' softmax denominator and adds no value: output and weights (rows summing below one) equal that reference.

    A module that also declares ALiBi runs with its slopes at 0, so that a wrong ALiBi fails alibi_matches_reference
    and not this law."""
    module = case.build()
    weights = case.weights_of(module)
    if weights.alibi_slopes is not None:
        module = case.build(weights=weights.replace(alibi_slopes=torch.zeros_like(weights.alibi_slopes)))
    case.assert_matches_reference(" with attention sinks" + (" (ALiBi slopes 0)" if weights.alibi_slopes is not None
                                                             else ""), module=module)
