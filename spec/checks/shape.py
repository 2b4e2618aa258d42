"""Shape, dtype and device of outputs and weights, for every layout."""
import torch

from ..errors import Mismatch
from ..requirements import EMPTY_SEQUENCES
from .registry import law


def _same_kind(case, t, what):
    p = case.problem
    if t.dtype != p.dtype:
        raise Mismatch(f"{what}.dtype = {t.dtype}, but should be {p.dtype} like the query")
    if t.device.type != case.device:
        raise Mismatch(f"{what}.device = {t.device}, but should be {case.device} like the query")


@law("shape")
def output_shapes(case):
    """The output has the query's layout, dtype and device; weights are batch-first (N, [H,] L, S'), or None if not asked for."""
    _, _, out, w = case.run()  # Case.call checks both shapes, and None where weights are not asked for
    _same_kind(case, out, "output")
    if w is not None:
        _same_kind(case, w, "weights")
    case.compared = True


@law("shape", EMPTY_SEQUENCES, severity="edge")
def empty_sequences(case):
    """No queries give an empty output; no keys give each output row the declared fully-masked-row result (out_proj.bias under "zeros")."""
    p = case.problem
    empties = [("no queries", p.replace(L=0, S=0 if p.self_attention else p.S, causal_attn_mask=False,
                                        fully_masked=None))]
    if not p.self_attention:
        empties.append(("no keys", p.replace(S=0, causal_attn_mask=False, fully_masked=None)))
    for name, empty in empties:
        for need_weights in case.scope.claimed("need_weights"):  # both paths: torch's differ here
            try:
                _check_empty(case, empty.replace(need_weights=need_weights), name)
            except Mismatch as m:
                raise Mismatch(f"with {name} (L={empty.L}, S={empty.S}, need_weights={need_weights}): "
                               f"{m.detail}", ratio=m.ratio) from None


def _check_empty(case, empty, name):
    module = case.build(empty)
    inputs = case.inputs(empty)
    out, w = case.call(module, inputs, empty)  # checks the shapes: (…, 0, …) where a length is 0
    _same_kind(case, out, "output")
    case.compared = True
    policy = case.scope.caps.fully_masked_rows  # a row with no key to attend to is a fully masked row
    if empty.L == 0 or policy == "unspecified":
        return  # nothing to compare, or nothing declared for such a row
    exp = case.expected(inputs, case.weights_of(module), empty)
    if policy == "nan":
        case.assert_same_nonfinite(out, torch.full_like(exp.output, float("nan")), "output", "the declared 'nan' policy")
        return
    case.assert_close(out, exp.output, exp.output_tol, "output", "the reference (attention 0: out_proj.bias)")
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, "weights")
