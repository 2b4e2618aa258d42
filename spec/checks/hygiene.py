"""Hygiene: inputs untouched, results reproducible, no state between calls."""
from ..inputs import make_inputs
from .registry import law


@law("hygiene")
def inputs_not_modified(case):
    """Query, key, value and masks are bit-identical after the call (forward and backward)."""
    module = case.build()
    inputs = case.inputs()
    saved = {n: t.detach().clone() for n, t in inputs.tensors().items()}
    out, _ = case.call(module, inputs)
    if True in case.scope.claimed("gradients") and out.requires_grad:
        case.guard(lambda: out.sum().backward(), "backward")
    for name, before in saved.items():
        case.assert_equal(getattr(inputs, name), before, f"{name} after the call", "before the call")


@law("hygiene")
def calls_are_deterministic(case):
    """In eval, two calls with the same inputs give bit-identical outputs and weights."""
    module, inputs, out, w = case.run()
    out2, w2 = case.call(module, inputs)
    case.assert_equal(out2, out, "output of the second call", "the first call")
    if w is not None:
        case.assert_equal(w2, w, "weights of the second call", "the first call")


@law("hygiene")
def no_state_between_calls(case):
    """A call on other inputs in between (same shapes, then longer) does not change the result of a call."""
    p = case.problem
    module, inputs, out, w = case.run()
    same = p.replace(seed=p.seed + 1)  # a cache keyed by shape would serve this call stale values
    others = make_inputs(same, case.device)
    after, _ = case.call(module, others, same)
    fresh, _ = case.call(case.build(), others, same)
    case.assert_equal(after, fresh, "output of a second call on other inputs", "a fresh module's")
    longer = p.L + 1
    other = p.replace(seed=p.seed + 2, L=longer, S=longer if (p.self_attention or p.causal_attn_mask) else p.S + 1)
    case.call(module, make_inputs(other, case.device), other)
    out2, w2 = case.call(module, inputs)
    case.assert_equal(out2, out, "output after another call", "before it")
    if w is not None:
        case.assert_equal(w2, w, "weights after another call", "before it")
