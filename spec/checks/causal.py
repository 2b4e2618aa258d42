"""Causality as a flag: ``is_causal=True`` (or a module that is always causal) hides the future.

The flag means the explicit causal mask of the declared alignment (``Capabilities.causal_alignment``):
when L != S, query i sits at key position i (top-left) or i + S - L (bottom-right). The reference
builds that mask (:func:`attnspec.reference.position_mask`) and merges it with the other masks.
"""
import torch

from ..errors import Mismatch
from ..inputs import aligned_position
from ..transforms import perturbed, randperm, take_rows
from .registry import law


def _against_reference(case, what: str):
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    name = f"the reference with the explicit {p.alignment} causal mask{what}"
    case.assert_close(out, exp.output, exp.output_tol, "output with is_causal=True", name)
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, "weights with is_causal=True", name)


@law("masking", needs=("the causal flag",), is_causal=True, key_padding_mask=(), attn_mask=(), min_length=2)
def causal_flag_equals_causal_mask(case):
    """With is_causal=True the output and weights equal the reference under the explicit causal mask of the declared alignment."""
    _against_reference(case, "")


@law("masking", needs=("the causal flag with a key_padding_mask",), is_causal=True, require_padding=True,
     attn_mask=(), min_length=2)
def causal_flag_with_key_padding_mask(case):
    """is_causal=True with a key_padding_mask equals the explicit causal mask merged with the padding."""
    _against_reference(case, " merged with the key_padding_mask")


@law("masking", needs=("the causal flag with an attn_mask",), is_causal=True, require_mask=True,
     key_padding_mask=(), min_length=2)
def causal_flag_with_attn_mask(case):
    """is_causal=True with an attn_mask equals the explicit causal mask merged with it: neither is dropped."""
    _against_reference(case, " merged with the attn_mask")


@law("masking", needs=("the causal flag",), is_causal=True, min_length=2)
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
                      f"output[rows {rows}] after changing token {j} under is_causal=True ({p.alignment})",
                      "before the change", spread_of=out)


@law("paths", needs=("the causal flag",), is_causal=True, key_padding_mask=(), attn_mask=(), min_length=2)
def causal_flag_on_every_path(case):
    """The causal flag is honoured on every path: need_weights True and False, train and eval, with autograd on and under no_grad and inference_mode."""
    p, caps = case.problem, case.adapter.capabilities
    module = case.build()
    inputs = case.inputs()
    exp = case.expected(inputs, case.weights_of(module), p.replace(need_weights=False))
    contexts = (("under torch.no_grad()", torch.no_grad), ("under torch.inference_mode()", torch.inference_mode),
                ("with autograd on", None))
    for need_weights in ((False, True) if caps.need_weights else (False,)):
        for training in (False, True):
            for where, context in contexts if not training else contexts[-1:]:
                module.train(training)
                path = (f"need_weights={need_weights}, {'train' if training else 'eval'} mode, {where}, "
                        f"is_causal=True ({p.alignment})")
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
                                  f"the reference with the explicit {p.alignment} causal mask")
