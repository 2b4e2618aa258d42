"""Rotary positions (RoPE): queries and keys turned by their absolute positions, so that attention logits
depend only on relative position. Where RoPE is declared, every law's reference applies it
(:func:`attnspec.reference.rotary`); these two laws say what positions may and may not change."""
import torch

from .registry import law

ROPE = "rotary positions (RoPE)"


def _shift(p) -> int:
    """A shift of every position, drawn from the seed: 1 to 40."""
    return 1 + (p.seed * 7919) % 40


@law("permutation", needs=(ROPE,))
def rope_depends_only_on_relative_position(case):
    """Shifting every query and key position by the same offset leaves the output and weights unchanged."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    d = _shift(p)
    shifted = p.replace(position_offset=p.position_offset + d)
    exp, exp2 = case.expected(inputs, weights), case.expected(inputs, weights, shifted)
    out2, w2 = case.call(module, inputs, shifted)
    what = f"positions shifted by {d} (from {shifted.position_offset})"
    case.assert_close(out2, out, exp.output_tol + exp2.output_tol, f"output with {what}",
                      f"positions from {p.position_offset}")
    if w is not None:
        case.assert_close(w2, w, exp.weights_tol + exp2.weights_tol, f"weights with {what}",
                          f"positions from {p.position_offset}")


@law("equivalence", needs=(ROPE,))
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
