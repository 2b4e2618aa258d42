"""Numerics: weights are probabilities; large inputs do not overflow."""
import torch

from . import law


@law("numerics", needs=("need_weights",), need_weights=True)
def weights_form_a_simplex(case):
    """Returned weights are non-negative and each row sums to one over all keys, appended ones included."""
    module, inputs, _, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    if bool((w < 0).any()):
        idx = tuple((w < 0).nonzero()[0].tolist())
        case.fail(f"weights[{', '.join(map(str, idx))}] = {w[idx].item():.6g}, but should be >= 0")
    sums = w.double().sum(-1)
    case.assert_close(sums, torch.ones_like(sums), w.shape[-1] * exp.weights_tol + 1e-12, "row sums of weights",
                      "one")


@law("numerics", scale=30.0)
def large_inputs_stay_finite(case):
    """With large inputs (logits in the hundreds) the output is finite and correct wherever the float64 logits fit in the dtype."""
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    if not bool(torch.isfinite(exp.output).all()):
        return  # the float64 logits themselves do not fit: nothing is required
    if not bool(torch.isfinite(out).all()):
        n = int((~torch.isfinite(out)).sum())
        case.fail(f"output has {n}/{out.numel()} non-finite elements, but should be finite: the float64 "
                  f"result is finite, so the computation overflows (softmax without subtracting the max, "
                  f"or scaling after the product in low precision?)")
    case.assert_close(out, exp.output, exp.output_tol, "output")
