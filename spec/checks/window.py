"""Sliding windows: query i (at key position pos, placed by the declared alignment) sees keys
``pos - left`` to ``pos + right`` (``Config.window``; None leaves a side unbounded)."""
import torch
from hypothesis import assume

from ..reference import position_mask
from ..transforms import perturbed, take_rows
from .registry import law


@law("masking", needs=("a sliding window",), window=True, min_length=2)
def keys_outside_window_do_not_affect_output(case):
    """Changing a key and value outside a query's window leaves that query's output unchanged."""
    p = case.problem
    outside = position_mask(p.L, p.S, window=p.config.window, alignment=p.alignment)  # (L, S): True = outside
    if p.self_attention:
        outside = outside & ~torch.eye(p.L, p.S, dtype=torch.bool)  # token j is also query j
    assume(bool(outside.any()))  # a window wider than these sequences hides nothing
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    j = int(outside.sum(0).argmax())  # the key outside the most windows
    where = [(b, j) for b in range(p.B)]
    if p.self_attention:
        x = perturbed(inputs.query, p, where, p.seed)
        changed = inputs.replace(query=x, key=x, value=x)
    else:
        k = perturbed(inputs.key, p, where, p.seed)
        changed = inputs.replace(key=k, value=k if p.key_is_value else perturbed(inputs.value, p, where, p.seed + 1))
    out2, _ = case.call(module, changed)
    rows = outside[:, j].nonzero().flatten().tolist()
    case.assert_close(take_rows(out2, p, rows), take_rows(out, p, rows), 2 * exp.output_tol,
                      f"output[rows {rows}] after changing key {j}, outside their window={p.config.window} "
                      f"({p.alignment})", "before the change", spread_of=out)


@law("masking", needs=("a sliding window", "masks"), window=True, require_mask=True)
def window_combines_like_masks(case):
    """A window with padding, an attention mask and causality (where drawn) equals the reference with all of them merged as masks."""
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    name = f"the reference with window={p.config.window} merged with the masks" + (
        " and the causal mask" if p.is_causal else "")
    case.assert_close(out, exp.output, exp.output_tol, "output", name)
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, "weights", name)


@law("masking", needs=("a sliding window",), window=False)
def wide_window_equals_full_attention(case):
    """A window wider than the sequences on both sides gives the output of the same module without a window."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    width = p.L + p.S
    kind = case.adapter.capabilities.window  # the widest window of the form the module takes
    wide = p.with_config(window=(width, None) if kind == "left" else (width, width))  # hides no key, either alignment
    out2, w2 = case.call(case.build(wide, weights=weights), inputs, wide)
    case.assert_close(out2, out, 2 * exp.output_tol, f"output with window={wide.config.window}", "without a window")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, f"weights with window={wide.config.window}", "without a window")
