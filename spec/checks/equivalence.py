"""Equivalence to the float64 reference computed from the module's own weights, and to torch."""
import torch
from torch import nn

from .. import tolerances
from ..adapter import DropIn
from ..inputs import generator, layout_shape
from ..requirements import GRADIENTS, RETURNS_WEIGHTS, ROPE, TORCH_API, UNIT_INPUTS
from .registry import law

TORCH = DropIn(nn.MultiheadAttention, name="torch.nn.MultiheadAttention")


@law("equivalence")
def output_matches_reference(case):
    """The output equals the float64 reference computed from the module's own weights."""
    module = case.build()
    inputs = case.inputs()
    out, _ = case.call(module, inputs)
    exp = case.expected(inputs, case.weights_of(module))
    case.assert_close(out, exp.output, exp.output_tol, "output")


@law("equivalence", RETURNS_WEIGHTS)
def weights_match_reference(case):
    """The returned attention weights equal the float64 reference's."""
    module = case.build()
    inputs = case.inputs()
    _, w = case.call(module, inputs)
    exp = case.expected(inputs, case.weights_of(module))
    case.assert_close(w, exp.weights, exp.weights_tol, "weights")


@law("equivalence", GRADIENTS, UNIT_INPUTS, dtypes=tolerances.HIGH_PRECISION)
def gradients_match_reference(case):
    """Gradients of the output w.r.t. query, key, value and every weight equal the reference's."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    weights = case.weights_of(module)
    upstream = torch.randn(layout_shape(p, p.L, p.config.embed_dim), generator=generator(p.seed, 3),
                           dtype=torch.float64)
    case.assert_gradients_match(module, inputs, weights, upstream)


@law("equivalence", TORCH_API)
def matches_torch_module(case):
    """Output and weights equal torch.nn.MultiheadAttention's, loaded with the same weights."""
    p = case.problem
    module = case.build()
    weights = case.weights_of(module)
    inputs = case.inputs()
    out, w = case.call(module, inputs)
    exp = case.expected(inputs, weights)
    # torch's module has all four biases or none: an absent one is loaded as zeros
    any_bias = any(b is not None for b in (weights.bq, weights.bk, weights.bv, weights.bo))
    ref64 = p.replace(dtype=torch.float64).with_config(bias=any_bias)
    torch_case = type(case)(TORCH, ref64, "cpu", case.rule)
    torch_module = torch_case.build(ref64, weights=weights)
    cast = inputs.__class__(**{n: None if t is None else t.detach().cpu().to(
        torch.float64 if t.is_floating_point() else t.dtype) for n, t in vars(inputs).items()})
    if p.self_attention:
        cast = cast.replace(key=cast.query, value=cast.query)
    t_out, t_w = torch_case.call(torch_module, cast, ref64)
    # torch itself is within a float64 rounding of the reference, so the implementation's bound applies,
    # widened by torch's own distance from the reference (where both are finite; elsewhere they must agree)
    case.assert_close(out, t_out, exp.output_tol + 2 * tolerances.max_error(t_out, exp.output), "output",
                      "torch.nn.MultiheadAttention")
    if w is not None and t_w is not None:
        case.assert_close(w, t_w, exp.weights_tol + 2 * tolerances.max_error(t_w, exp.weights), "weights",
                          "torch.nn.MultiheadAttention")


@law("equivalence", ROPE)
def rope_at_position_zero_is_plain_attention(case):
    """With every query and key at position 0, nothing is rotated: the output and weights equal the reference without RoPE."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    zeros = dict(positions=torch.zeros(p.L, dtype=torch.long, device=case.device),
                 key_positions=torch.zeros(p.S, dtype=torch.long, device=case.device))
    out, w = case.call(module, inputs, **zeros)
    exp = case.expected(inputs, case.weights_of(module), p.replace(rope=None))
    name = "the reference without RoPE"
    case.assert_close(out, exp.output, exp.output_tol, "output with every position 0", name)
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, "weights with every position 0", name)
