"""Keys hidden by position: the causal flag and sliding windows.

``is_causal=True`` (or a module that is always causal) means the explicit causal mask of the declared
alignment (``Capabilities.causal_alignment``): when L != S, query i sits at key position i (top-left) or
i + S - L (bottom-right). A window ``(left, right)`` (``Config.window``; None leaves a side unbounded)
lets query i, at key position pos, see keys ``pos - left`` to ``pos + right``. The reference builds both
masks (:func:`attnspec.masks.position_mask`) and merges them with the other masks.
"""
import torch
from hypothesis import assume

from ..errors import Mismatch
from ..inputs import aligned_position
from ..masks import position_mask
from ..requirements import (CAUSAL_FLAG, CAUSAL_FLAG_ALONE, CAUSAL_FLAG_WITH_ATTN_MASK, CAUSAL_FLAG_WITH_PADDING,
                            ALIBI, MASKED, MORE_QUERIES_THAN_KEYS, ROPE_SCALED, WINDOW_ABSENT, WINDOWED)
from ..transforms import perturbed, randperm, take_rows
from .registry import law


def causal_words(case) -> tuple:
    """How a message names the causality of this call, and the causal mask it is held to: the alignment is
    named only where it matters (L != S), and an always-causal module is not said to take a flag."""
    p = case.problem
    flag = "(always causal)" if case.scope.caps.causality == "always" else "with is_causal=True"
    if p.L == p.S:
        return flag, "the causal mask"
    pos = "i" if p.causal_alignment == "top-left" else "i + S - L"
    return flag, f"the {p.causal_alignment} causal mask (query i sees keys up to {pos}, L={p.L}, S={p.S})"


def _against_reference(case, what: str):
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    flag, mask = causal_words(case)
    name = f"the reference with {mask}{what}"
    case.assert_close(out, exp.output, exp.output_tol, f"output {flag}", name)
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, f"weights {flag}", name)


@law("positional", CAUSAL_FLAG, CAUSAL_FLAG_ALONE)
def causal_flag_equals_causal_mask(case):
    """With is_causal=True the output and weights equal the reference under the explicit causal mask of the declared alignment."""
    _against_reference(case, "")


@law("positional", CAUSAL_FLAG_WITH_PADDING)
def causal_flag_with_key_padding_mask(case):
    """is_causal=True with a key_padding_mask equals the explicit causal mask merged with the padding."""
    _against_reference(case, " merged with the key_padding_mask")


@law("positional", CAUSAL_FLAG_WITH_ATTN_MASK)
def causal_flag_with_attn_mask(case):
    """is_causal=True with an attn_mask equals the explicit causal mask merged with it: neither is dropped."""
    _against_reference(case, " merged with the attn_mask")


@law("positional", CAUSAL_FLAG, CAUSAL_FLAG_ALONE, MORE_QUERIES_THAN_KEYS)
def causal_flag_with_more_queries_than_keys(case):
    """With is_causal=True and L > S the output equals the reference of the declared alignment; rows that see no key get the fully-masked-row result."""
    p = case.problem
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    flag, mask = causal_words(case)
    dead = [i for i in range(p.L) if bool(position_mask(p.L, p.S, is_causal=True, alignment=p.causal_alignment)[i].all())]
    live = [i for i in range(p.L) if i not in dead]
    policy = case.scope.caps.fully_masked_rows
    case.assert_close(take_rows(out, p, live), take_rows(exp.output, p, live), exp.output_tol,
                      f"output rows {live} {flag}", f"the reference with {mask}", spread_of=exp.output)
    if dead and policy == "zeros":
        case.assert_close(take_rows(out, p, dead), take_rows(exp.output, p, dead), exp.output_tol,
                          f"output rows {dead} {flag}, which see no key", "the 'zeros' policy (out_proj.bias)",
                          spread_of=exp.output)
    elif dead and policy == "nan":
        got = take_rows(out, p, dead)
        case.assert_same_nonfinite(got, torch.full_like(got, float("nan")), f"output rows {dead} {flag}, which see "
                                   "no key", "the declared 'nan' policy")


@law("positional", CAUSAL_FLAG)
def causal_flag_hides_the_future(case):
    """Under is_causal=True, changing the key and value at position j (and query j in self-attention) never changes the outputs of queries placed before j."""
    p = case.problem
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    first = aligned_position(p, 0) + 1  # the first key some query does not see
    j = first + int(randperm(p.S - first, p.seed)[0])
    where = [(b, j) for b in range(p.B)]
    if p.self_attention:
        x = perturbed(inputs.query, p, where, p.seed)
        changed = inputs.replace(query=x, key=x, value=x)
    else:
        k = perturbed(inputs.key, p, where, p.seed + 1)
        changed = inputs.replace(key=k, value=k if p.key_is_value else perturbed(inputs.value, p, where, p.seed + 2))
    out2, _ = case.call(module, changed)
    rows = [i for i in range(p.L) if aligned_position(p, i) < j]
    case.assert_close(take_rows(out2, p, rows), take_rows(out, p, rows), 2 * exp.output_tol,
                      f"output[rows {rows}] after changing token {j} {causal_words(case)[0]} "
                      f"({causal_words(case)[1]})",
                      "before the change", spread_of=out)


@law("positional", CAUSAL_FLAG, CAUSAL_FLAG_ALONE)
def causal_flag_on_every_path(case):
    """The causal flag is honoured on every path: need_weights True and False, train and eval, with autograd on and under no_grad and inference_mode."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    exp = case.expected(inputs, case.weights_of(module), p.replace(need_weights=False))
    contexts = (("under torch.no_grad()", torch.no_grad), ("under torch.inference_mode()", torch.inference_mode),
                ("with autograd on", None))
    for need_weights in case.scope.claimed("need_weights"):
        for training in (False, True):
            for where, context in contexts if not training else contexts[-1:]:
                module.train(training)
                path = f"need_weights={need_weights}, {'train' if training else 'eval'} mode, {where}"
                try:
                    if context is None:
                        out, _ = case.call(module, inputs, need_weights=need_weights)
                    else:
                        with context():
                            out, _ = case.call(module, case.inputs(), need_weights=need_weights)
                            out = out.clone()
                except Mismatch as m:
                    raise Mismatch(f"{path}: {m.detail}", ratio=m.ratio) from None
                case.assert_close(out, exp.output, exp.output_tol, f"output ({path})",
                                  f"the reference with {causal_words(case)[1]}")


@law("positional", WINDOWED)
def keys_outside_window_do_not_affect_output(case):
    """Changing a key and value outside a query's window leaves that query's output unchanged."""
    p = case.problem
    outside = position_mask(p.L, p.S, window=p.config.window, alignment=p.causal_alignment)  # (L, S): True = outside
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
                      f"({p.causal_alignment})", "before the change", spread_of=out)


@law("positional", WINDOWED, MASKED)
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


@law("positional", WINDOW_ABSENT)
def wide_window_equals_full_attention(case):
    """A window wider than the sequences on both sides gives the output of the same module without a window."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    width = p.L + p.S
    kind = case.scope.caps.window_kind  # the widest window of the form the module takes
    wide = p.with_config(window=(width, None) if kind == "left" else (width, width))  # hides no key, either alignment
    out2, w2 = case.call(case.build(wide, weights=weights), inputs, wide)
    case.assert_close(out2, out, 2 * exp.output_tol, f"output with window={wide.config.window}", "without a window")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, f"weights with window={wide.config.window}", "without a window")


@law("positional", ALIBI)
def alibi_matches_reference(case):
    """ALiBi adds -slope * |pos_i - j| to each head's logits (slopes from the weights, query i at its aligned position): the output equals that reference."""
    p = case.problem
    case.assert_matches_reference(f" with ALiBi ({p.causal_alignment}, L={p.L}, S={p.S})",
                                  "the reference with ALiBi biases")


@law("positional", ROPE_SCALED)
def rope_scaling_matches_reference(case):
    """Rotary frequencies are rescaled as the declared RoPE scaling says: the output equals that reference."""
    p = case.problem
    case.assert_matches_reference(f" with {p.rope.short()}, positions from {p.position_offset}")
