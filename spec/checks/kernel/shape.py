"""Shapes at the edges: no queries, no keys."""
from ...kernel.requirements import ZERO_LENGTH_KEYS
from ..registry import law


@law("shape", ZERO_LENGTH_KEYS, severity="edge", contract="kernel")
def kernel_empty_sequences(case):
    """No queries give an empty output (and LSE); no keys give output 0 and LSE -inf for every query."""
    p = case.problem.replace(return_lse=case.adapter.capabilities.lse)
    for empty in (p.replace(Lq=0), p.replace(Lk=0)):
        x = case.inputs(empty)
        out, lse = case.call(x, empty)
        what = "with Lq=0" if empty.Lq == 0 else "with Lk=0"
        case.assert_equal(out, out.new_zeros(out.shape), f"output {what}", "zero")
        if lse is not None:
            case.assert_equal(lse, lse.new_full(lse.shape, float("-inf")), f"lse {what}", "-inf")
