"""Masking: masked keys are ignored, mask forms agree, fully masked rows behave as declared."""
import torch
from hypothesis import assume

from .. import masks, tolerances
from ..inputs import generator, layout_shape
from ..requirements import (SOFTCAP, BOOL_AND_FLOAT_MASKS, CAUSAL_ATTN_MASK, CROSS_ATTENTION, FLOAT_ATTN_MASK, FLOAT_PADDING,
                            FULLY_MASKED, FULLY_MASKED_POLICY, GRADIENTS, MASK_3D, MASKED, NO_SINKS, PADDED, RETURNS_WEIGHTS,
                            SEVERAL_ITEMS, UNIT_INPUTS, draws)
from ..transforms import batch_item, masked, perturbed, randperm, take_rows
from .registry import law


@law("masking", MASKED, draws(min_length=2))
def masked_keys_do_not_affect_output(case):
    """Changing a key and value that a query masks (in every head) leaves that query's output unchanged."""
    p = case.problem
    module, inputs, out, _ = case.run()
    # (B, L, S): query l masks key j in every head (self-attention: not its own position, which is also the query)
    masking = masked(inputs, p).all(1)
    if p.self_attention:
        masking &= ~torch.eye(p.L, p.S, dtype=torch.bool)
    exp = case.expected(inputs, case.weights_of(module))
    picks = [(b, int(masking[b].sum(0).argmax())) for b in range(p.B)]  # per item, the key masked for most rows
    if p.self_attention:
        x = perturbed(inputs.query, p, picks, p.seed)
        changed = inputs.replace(query=x, key=x, value=x)
    else:
        k = perturbed(inputs.key, p, picks, p.seed)
        changed = inputs.replace(key=k, value=k if p.key_is_value else perturbed(inputs.value, p, picks, p.seed + 1))
    out2, _ = case.call(module, changed)
    for b, j in picks:  # every item has such a key: attnspec.inputs guarantees one where S >= 2
        rows = masking[b, :, j].nonzero().flatten().tolist()
        case.assert_close(take_rows(out2, p, rows)[b if p.batched else 0],
                          take_rows(out, p, rows)[b if p.batched else 0], 2 * exp.output_tol,
                          f"output[b={b}, rows {rows}] after changing masked key {j}", "before the change",
                          spread_of=out)


@law("masking", PADDED, GRADIENTS, CROSS_ATTENTION, UNIT_INPUTS, draws(min_length=2))
def masked_keys_get_zero_gradient(case):
    """Keys and values masked for every query receive exactly zero gradient."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    upstream = torch.randn(layout_shape(p, p.L, p.config.embed_dim), generator=generator(p.seed, 3),
                           dtype=torch.float64)
    grads = case.gradients(module, inputs, upstream)
    dead = masked(inputs, p).all(dim=1).all(dim=1)  # (B, S): padded keys (attnspec.inputs pads one per item)
    for name in ("key",) if p.key_is_value else ("key", "value"):  # one tensor: its gradient sums both uses
        g = grads[name]
        g = g.unsqueeze(0) if not p.batched else (g if p.layout == "batch_first" else g.transpose(0, 1))
        for b, j in dead.nonzero().tolist():  # g is (N, S, D)
            case.assert_equal(g[b, j], torch.zeros_like(g[b, j]), f"grad {name}[b={b}, key {j}]", "zero")


@law("masking", BOOL_AND_FLOAT_MASKS)
def bool_mask_equals_float_mask(case):
    """A bool mask gives the same output and weights as the float mask with -inf where it is True."""
    p, caps = case.problem, case.adapter.capabilities
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    changes = {}
    if inputs.key_padding_mask is not None and "float" in caps.key_padding_mask_kinds:
        changes["key_padding_mask"] = masks.additive(inputs.key_padding_mask, p.dtype)
    if inputs.attn_mask is not None and "float" in caps.attn_mask_kinds:
        changes["attn_mask"] = masks.additive(inputs.attn_mask, p.dtype)
    out2, w2 = case.call(module, inputs.replace(**changes))
    case.assert_close(out2, out, 2 * exp.output_tol, "output with float masks", "with bool masks")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, "weights with float masks", "with bool masks")


@law("masking", FLOAT_ATTN_MASK, NO_SINKS)
def float_mask_row_shift_invariance(case):
    """Adding a constant to each query row of a float attention mask changes nothing.

    Not with add_bias_kv or add_zero_attn: their appended keys are unmasked (0) and do not shift; nor with
    attention sinks, whose logits do not shift either.
    """
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    am = inputs.attn_mask  # always drawn: a float attn_mask and no key_padding_mask
    shift = torch.randn(*am.shape[:-1], 1, generator=generator(p.seed, 7), dtype=torch.float64) * 5
    out2, w2 = case.call(module, inputs.replace(attn_mask=am + shift.to(am.device, am.dtype)))
    tol = 2 * exp.output_tol + tolerances.bound("output", case.tol_dtype, exp.output, [])  # the shift rounds in dtype
    case.assert_close(out2, out, tol, "output with shifted mask rows", "before the shift")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol + tolerances.bound("weights", case.tol_dtype, exp.weights, []),
                          "weights with shifted mask rows", "before the shift")


@law("masking", FLOAT_PADDING)
def float_padding_equals_column_mask(case):
    """A float key_padding_mask equals the attention mask that adds the same value down each column."""
    p = case.problem
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    B, H, L, S = p.B, p.config.num_heads, p.L, p.S
    kpm = masks.padding_as_4d(inputs.key_padding_mask, batch=B, keys=S)  # (B, 1, 1, S)
    column = masks.heads_folded(kpm.expand(B, H, L, S))  # (B*H, L, S), row b*H + h
    out2, w2 = case.call(module, inputs.replace(key_padding_mask=None, attn_mask=column))
    case.assert_close(out2, out, 2 * exp.output_tol, "output with the column mask", "with key_padding_mask")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, "weights with the column mask", "with key_padding_mask")


@law("masking", MASK_3D, SEVERAL_ITEMS)
def mask_3d_is_per_sample_per_head(case):
    """With a 3-D mask, item b's output equals a call on item b alone with mask rows b*H to (b+1)*H."""
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


@law("masking", CAUSAL_ATTN_MASK)
def causal_mask_hides_the_future(case):
    """Under a causal mask, changing token j (query, key and value) leaves the outputs before j unchanged."""
    p = case.problem
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    j = 1 + int(randperm(p.L - 1, p.seed)[0])
    where = [(b, j) for b in range(p.B)]
    q = perturbed(inputs.query, p, where, p.seed)
    if p.self_attention:
        changed = inputs.replace(query=q, key=q, value=q)
    else:
        k = perturbed(inputs.key, p, where, p.seed + 1)
        changed = inputs.replace(query=q, key=k,
                                 value=k if p.key_is_value else perturbed(inputs.value, p, where, p.seed + 2))
    out2, _ = case.call(module, changed)
    rows = list(range(j))
    case.assert_close(take_rows(out2, p, rows), take_rows(out, p, rows), 2 * exp.output_tol,
                      f"output[rows < {j}] after changing token {j}", "before the change", spread_of=out)


@law("masking", RETURNS_WEIGHTS, MASKED, draws(min_length=2))
def weights_zero_on_masked_keys(case):
    """Returned weights are exactly zero on masked keys."""
    p = case.problem
    _, inputs, _, w = case.run()
    mask = masks.with_visible_keys(masked(inputs, p), p.config.extra_keys)  # (B, H, L, S')
    if p.average_attn_weights:
        mask = mask.all(dim=1)  # averaged weights vanish where every head masks
    if not p.batched:
        mask = mask[0]
    zero = torch.zeros_like(w)
    got = torch.where(mask.to(w.device), w, zero)
    case.assert_equal(got, zero, "weights on masked keys", "zero")


def _dead_rows(inputs, p):
    """(B, L) rows with at least one fully masked head."""
    return masked(inputs, p).all(dim=-1).any(dim=1)


@law("masking", FULLY_MASKED, FULLY_MASKED_POLICY, severity="edge")
def fully_masked_rows_follow_policy(case):
    """A query row whose keys are all masked gets the declared result: attention 0 (output = out_proj.bias, weights 0) for "zeros", NaN for "nan"."""
    p, policy = case.problem, case.scope.caps.fully_masked_rows
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    # what a wrong answer would be on the scale of: the same call without masks (the rows may be all 0)
    unmasked_out, unmasked_w = case.reference(inputs.replace(key_padding_mask=None, attn_mask=None), weights)
    dead = _dead_rows(inputs, p)  # (B, L)
    got = take_rows(out, p, slice(None))  # (N, L, E)
    want = take_rows(exp.output, p, slice(None))
    for b, l in dead.nonzero().tolist():
        if policy == "nan":
            case.assert_same_nonfinite(got[b, l], torch.full_like(want[b, l], float("nan")),
                                       f"output[b={b}, fully masked row {l}]", "the declared 'nan' policy")
        else:
            whole = masked(inputs, p)[b, :, l].all().item()  # every head of the row masked, or only some
            why = ("every head's attention 0, so the output is out_proj's bias" if whole else
                   "the fully masked heads' attention 0, the other heads' as usual")
            case.assert_close(got[b, l], want[b, l], exp.output_tol, f"output[b={b}, fully masked row {l}]",
                              f"the 'zeros' policy ({why})", spread_of=unmasked_out)
    if w is not None and policy == "zeros":  # the rows with a fully masked head: only they are the policy's
        got_w, want_w = (w, exp.weights) if p.batched else (w.unsqueeze(0), exp.weights.unsqueeze(0))  # (N, [H,] L, S')
        for b, l in dead.nonzero().tolist():
            case.assert_close(got_w[b, ..., l, :], want_w[b, ..., l, :], exp.weights_tol,
                              f"weights[b={b}, row {l}] (a row with a fully masked head)",
                              "the 'zeros' policy (a fully masked head's weights are 0)", spread_of=unmasked_w)


@law("masking", FULLY_MASKED, UNIT_INPUTS, severity="edge")
def fully_masked_rows_do_not_contaminate(case):
    """Fully masked rows leave every other row and batch item finite and correct, gradients included."""
    p = case.problem
    module, inputs, out, _ = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    live = ~_dead_rows(inputs, p)  # (B, L)
    assume(bool(live.any()))  # one batch item, all of it masked: no other row to contaminate
    got, want = take_rows(out, p, slice(None)), take_rows(exp.output, p, slice(None))
    for b in range(p.B):
        rows = live[b].nonzero().flatten().tolist()
        if rows:
            case.assert_close(got[b, rows], want[b, rows], exp.output_tol, f"output[b={b}, live rows {rows}]")
    if not case.adapter.capabilities.gradients:
        return
    # a loss on the live rows only: its gradients must be finite and equal the reference's
    up = torch.randn(got.shape, generator=generator(p.seed, 3), dtype=torch.float64) * live[..., None]
    upstream = up.squeeze(0) if not p.batched else (up if p.layout == "batch_first" else up.transpose(0, 1))
    case.assert_gradients_match(module, inputs, weights, upstream, "grad of a loss on live rows:")


@law("masking", SOFTCAP, MASKED, draws(scaled=False))
def softcap_applies_before_masking(case):
    """With softcap and masks, the cap bounds the logits before the masks: a masked key stays masked (a cap after the mask lifts -inf to -softcap)."""
    p = case.problem
    case.assert_matches_reference(f" with softcap={p.config.softcap} and masks", "the reference (cap, then masks)")
