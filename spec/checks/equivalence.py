"""Equivalence to the float64 reference computed from the module's own weights, and to torch."""
import torch
from torch import nn

from .. import reference, tolerances
from ..adapter import DropIn
from ..errors import Mismatch
from ..inputs import generator, layout_shape
from ..requirements import (CUSTOM_SCALE, GRADIENTS, QK_NORM, RETURNS_WEIGHTS, ROPE, SOFTCAP, TORCH_API, UNIT_INPUTS,
                            draws)
from .registry import law

TORCH = DropIn(nn.MultiheadAttention, name="torch.nn.MultiheadAttention")


@law("equivalence")
def output_matches_reference(case):
    """The output equals the float64 reference computed from the module's own weights."""
    module = case.build()
    inputs = case.inputs()
    out, _ = case.call(module, inputs)
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    try:
        case.assert_close(out, exp.output, exp.output_tol, "output")
    except Mismatch as m:
        raise Mismatch(m.detail + _precision_hint(case, module, weights, out), ratio=m.ratio) from None


def _float32_error(case, problem, module=None, weights=None):
    """(error over the tolerance a float32 computation of ``problem`` gets, the error, the reference), with the
    module given or one built for ``problem``; None where the module cannot run it."""
    try:
        module = module if module is not None else case.build(problem)
        weights = weights if weights is not None else case.weights_of(module)
        inputs = case.inputs(problem)
        out, _ = case.call(module, inputs, problem)
    except Mismatch:
        return None
    out64, _ = case.reference(inputs, weights, problem)
    plain = [case.reference(inputs, weights, problem, dtype=torch.float32, scale_keys=s)[0] for s in (False, True)]
    tol = tolerances.bound("output", torch.float32, out64, plain, terms=tolerances.reduction_length(problem, "output"),
                           logits=tolerances.magnitude(case.logits(inputs, weights, problem)))
    err = out.detach().to("cpu", torch.float64) - out64
    return (tolerances.max_error(out, out64) / tol if tol > 0 else float("inf")), err, out64, weights


def _scales_heads(err: torch.Tensor, expected: torch.Tensor, weights, num_heads: int) -> bool:
    """Whether the error is, in every query row and head, one constant times that head's output. Both are
    taken back through the output projection to the heads."""
    err, expected = err.reshape(-1, err.shape[-1]), expected.reshape(-1, expected.shape[-1])  # (rows, E)
    if weights.Wo is not None:  # out = heads @ Wo^T + bo, Wo square: heads = (out - bo) @ Wo^-T
        inverse = torch.linalg.pinv(weights.Wo.transpose(0, 1))
        err, expected = err @ inverse, (expected - (0 if weights.bo is None else weights.bo)) @ inverse
    err = err.reshape(err.shape[0], num_heads, -1)  # (rows, H, hd)
    expected = expected.reshape(expected.shape[0], num_heads, -1)
    c = (err * expected).sum(-1, keepdim=True) / (expected * expected).sum(-1, keepdim=True).clamp_min(1e-300)
    residual = (err - c * expected).norm(dim=-1)  # (rows, H)
    return bool((residual <= 0.1 * err.norm(dim=-1) + 1e-300).all())


def _diagnostic(p, multiple: int):
    """``p`` with unit inputs and heads at least 4 wide (a width the module takes): a problem on which float32
    rounding and a scaling or saturation bug look different; None if there is no such width."""
    widths = [d for d in range(max(4, p.config.head_dim), 129)
              if d % multiple == 0 and (p.rope is None or p.rope.fits(d))]
    return p.replace(input_scale=1.0).with_config(embed_dim=p.config.num_heads * widths[0]) if widths else None


def _precision_hint(case, module, weights, out) -> str:
    """A possible cause, worded as one, when a float64 output errs as a float32 computation of it would.

    Only where the evidence supports it: the error is within a float32 computation's tolerance, on this
    problem and on one with unit inputs and wider heads (a logic bug that a saturated softmax hides, such as
    a wrong scale or RoPE base, shows there); there, its signs are mixed, and it does not scale each head's
    output by a constant, as a normalisation bug such as dividing by ``sum + 1e-8`` does."""
    p = case.problem
    if case.tol_dtype != torch.float64:
        return ""
    here, diagnostic = _float32_error(case, p, module, weights), _diagnostic(p, case.scope.caps.head_dim_multiple)
    wide = None if diagnostic is None else _float32_error(case, diagnostic)
    if here is None or wide is None or max(here[0], wide[0]) > 1:
        return ""
    _, err, expected, wide_weights = wide
    if not (bool((err > 0).any()) and bool((err < 0).any())) or \
            _scales_heads(err, expected, wide_weights, diagnostic.config.num_heads):
        return ""
    return ("; this error is within what a float32 computation errs by, here and with unit inputs and wider "
            "heads: possibly the module computes in float32; if it does so on purpose, declare "
            "compute_dtype=torch.float32")


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
    """With every query and key at position 0, nothing is rotated: the output and weights equal the reference without RoPE (YaRN's factor still scales)."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    zeros = dict(positions=torch.zeros(p.L, dtype=torch.long, device=case.device),
                 key_positions=torch.zeros(p.S, dtype=torch.long, device=case.device))
    out, w = case.call(module, inputs, **zeros)
    plain, name = p.replace(rope=None), "the reference without RoPE"
    _, factor = reference.rotary_frequencies(p.rope, p.rope.rotated(p.config.head_dim))
    if factor != 1:  # YaRN multiplies cos and sin, so every q . k, by its attention factor, twice
        plain = plain.with_config(softmax_scale=p.config.scale * factor ** 2)
        name += f" (logits times YaRN's attention factor squared, {factor ** 2:.6g})"
    exp = case.expected(inputs, case.weights_of(module), plain)
    case.assert_close(out, exp.output, exp.output_tol, "output with every position 0", name)
    if w is not None:
        case.assert_close(w, exp.weights, exp.weights_tol, "weights with every position 0", name)


@law("equivalence", CUSTOM_SCALE, draws(softcapped=False))
def softmax_scale_is_applied(case):
    """With softmax_scale given, the logits are scaled by it instead of head_dim ** -0.5: the output equals that reference.

    Drawn without a soft cap, so that a wrong cap fails the cap's laws and not this one."""
    case.assert_matches_reference(f" with softmax_scale={case.problem.config.softmax_scale}")


@law("equivalence", SOFTCAP, draws(scaled=False))
def softcap_matches_reference(case):
    """With softcap c the scaled logits s become c * tanh(s / c) before any mask or bias: the output equals that reference.

    Drawn with the default scale, so that a wrong softmax_scale fails softmax_scale_is_applied and not this one."""
    case.assert_matches_reference(f" with softcap={case.problem.config.softcap}")


@law("equivalence", QK_NORM)
def qk_norm_matches_reference(case):
    """Queries and keys are RMS-normalised with the module's weights (per head or over the projection, as declared) before RoPE and the product."""
    norm = case.problem.qk_norm
    case.assert_matches_reference(f" with qk_norm over {norm.over}, eps={norm.eps:g}, offset={norm.offset:g}")
