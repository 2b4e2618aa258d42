"""Permutation laws: attention has no notion of position."""
from ..transforms import batch_item, permute_keys, permute_queries, permute_sequence, randperm, take_rows
from .registry import law

NO_ROPE = "position-free attention (no RoPE: logits depend on positions)"


def _permute_weight_rows(w, perm, p):
    """Returned weights (N, [H,] L, S') with query rows reordered."""
    return w[..., perm.to(w.device), :]


def _permute_weight_cols(w, perm, p):
    """Returned weights with the first S key columns reordered (appended keys stay last)."""
    extra = p.config.extra_keys
    cols = perm.tolist() + list(range(p.S, p.S + extra))
    return w[..., cols]


@law("permutation", needs=("attention that can be order-free", NO_ROPE), self_attention=True, permutes_keys=True,
     min_length=2, positional=False)  # a permutation of one moves nothing
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


@law("permutation", needs=("cross-attention", "attention that can be order-free", NO_ROPE), self_attention=False,
     permutes_keys=True, min_length=2, positional=False)
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


@law("permutation", needs=("cross-attention", "attention that can be order-free", NO_ROPE), self_attention=False,
     min_length=2, positional=False)
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


@law("permutation", needs=("batched input",), batched=True, min_batch=2)
def batch_items_are_independent(case):
    """Each batch item's output equals a call on that item alone."""
    module, inputs, out, w = case.run()
    each_item_alone(case, module, inputs, out, w)


def each_item_alone(case, module, inputs, out, w):
    """Compare every batch item's output (and weights) with a call on that item alone."""
    p = case.problem
    exp = case.expected(inputs, case.weights_of(module))
    one = p.replace(batch=1)
    for b in range(p.B):
        out_b, w_b = case.call(module, batch_item(inputs, p, b), one)
        case.assert_close(take_rows(out_b, one, slice(None))[0], take_rows(out, p, slice(None))[b],
                          2 * exp.output_tol, f"output[b={b}] alone", "in the batch")
        if w is not None:
            case.assert_close(w_b[0], w[b], 2 * exp.weights_tol, f"weights[b={b}] alone", "in the batch")
