"""Permutation laws: attention has no notion of position, batch items are independent, and with RoPE only
relative positions matter."""
from ..requirements import (CROSS_ATTENTION, ORDER_FREE, PERMUTES_KEYS, POSITION_FREE, RELATIVE_ROPE, SELF_ATTENTION,
                            SEVERAL_ITEMS, draws)
from ..transforms import permute_keys, permute_queries, permute_sequence, randperm, take_rows
from .masking import each_item_alone
from .registry import law


def _permute_weight_rows(w, perm, p):
    """Returned weights (N, [H,] L, S') with query rows reordered."""
    return w[..., perm.to(w.device), :]


def _permute_weight_cols(w, perm, p):
    """Returned weights with the first S key columns reordered (appended keys stay last)."""
    extra = p.config.extra_keys
    cols = perm.tolist() + list(range(p.S, p.S + extra))
    return w[..., cols]


@law("permutation", ORDER_FREE, POSITION_FREE, SELF_ATTENTION, PERMUTES_KEYS, draws(min_length=2))
def self_attention_permutation_equivariance(case):
    """Permuting the sequence of a self-attention input (and its masks) permutes the output the same way."""
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    perm = randperm(p.L, p.seed)
    out2, w2 = case.call(module, permute_sequence(inputs, p, perm))
    case.assert_close(take_rows(out2, p, slice(None)), take_rows(out, p, perm), 2 * exp.output_tol,
                      "output of the permuted sequence", "the permuted output")
    if w is not None:
        want = _permute_weight_cols(_permute_weight_rows(w, perm, p), perm, p)
        case.assert_close(w2, want, 2 * exp.weights_tol, "weights of the permuted sequence", "the permuted weights")


@law("permutation", ORDER_FREE, POSITION_FREE, CROSS_ATTENTION, PERMUTES_KEYS, draws(min_length=2))
def key_value_permutation_invariance(case):
    """Permuting keys and values together (with their mask columns) leaves the output unchanged."""
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    perm = randperm(p.S, p.seed)
    out2, w2 = case.call(module, permute_keys(inputs, p, perm))
    case.assert_close(out2, out, 2 * exp.output_tol, "output with permuted keys", "before the permutation")
    if w is not None:
        case.assert_close(w2, _permute_weight_cols(w, perm, p), 2 * exp.weights_tol,
                          "weights with permuted keys", "the permuted weights")


@law("permutation", ORDER_FREE, POSITION_FREE, CROSS_ATTENTION, draws(min_length=2))
def query_permutation_equivariance(case):
    """Permuting the queries (with their mask rows) permutes the output rows the same way."""
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    perm = randperm(p.L, p.seed)
    out2, w2 = case.call(module, permute_queries(inputs, p, perm))
    case.assert_close(take_rows(out2, p, slice(None)), take_rows(out, p, perm), 2 * exp.output_tol,
                      "output of the permuted queries", "the permuted output")
    if w is not None:
        case.assert_close(w2, _permute_weight_rows(w, perm, p), 2 * exp.weights_tol,
                          "weights of the permuted queries", "the permuted weights")


@law("permutation", SEVERAL_ITEMS)
def batch_items_are_independent(case):
    """Each batch item's output equals a call on that item alone."""
    module, inputs, out, w = case.run()
    each_item_alone(case, module, inputs, out, w)


def _shift(p) -> int:
    """A shift of every position, drawn from the seed: 1 to 40."""
    return 1 + (p.seed * 7919) % 40


@law("permutation", RELATIVE_ROPE)
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
