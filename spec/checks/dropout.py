"""Dropout: inactive in eval; in training it drops whole attention weights and rescales the rest."""
import torch

from .. import masks, reference
from ..requirements import DROPOUT, PER_HEAD_WEIGHTS_DRAWN, TRAINING_DROPOUT, WITH_OR_WITHOUT_FLAG, draws
from ..transforms import masked
from .registry import law


@law("dropout", DROPOUT, WITH_OR_WITHOUT_FLAG)
def dropout_inactive_in_eval(case):
    """In eval mode a module built with dropout computes the reference output, and the same output on every call."""
    module, inputs, out, _ = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    case.assert_close(out, exp.output, exp.output_tol, "output in eval with dropout=0.5")
    again, _ = case.call(module, inputs)
    case.assert_equal(again, out, "output of a second eval call", "the first call")


@law("dropout", TRAINING_DROPOUT, PER_HEAD_WEIGHTS_DRAWN, WITH_OR_WITHOUT_FLAG)
def dropout_in_training_masks_weights(case):
    """In training each returned weight is 0 or the softmax weight / (1 - p), and the output is computed from exactly those weights."""
    p = case.problem
    keep = 1.0 - p.config.dropout
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights, p.replace(training=False))
    got = w.detach().cpu().double()
    if not p.batched:
        got = got.unsqueeze(0)
    soft = exp.weights if p.batched else exp.weights.unsqueeze(0)  # (N, H, L, S')
    kept = got != 0
    case.assert_close(torch.where(kept, got, soft / keep), soft / keep, exp.weights_tol / keep,
                      "kept weights", "softmax / (1 - p)")
    visible = ~masks.with_visible_keys(masked(inputs, p), p.config.extra_keys) & (soft > 1e-3)
    if int(visible.sum()) >= 20 and bool(kept[visible].all()):  # all kept: chance 0.5**20 if dropout works
        case.fail(f"no weight was dropped among {int(visible.sum())} visible ones with dropout={p.config.dropout} "
                  "in training: dropout is inactive")
    cast = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    _, v = reference.attention_logits(cast(inputs.query), cast(inputs.key), cast(inputs.value), weights,
                                      num_heads=p.config.num_heads, batch_first=p.config.batch_first,
                                      add_zero_attn=p.config.add_zero_attn)
    heads = got @ v  # (N, H, L, hd)
    merged = heads.transpose(1, 2).reshape(heads.shape[0], p.L, -1)  # (N, L, E)
    want = reference.from_batch_first(reference.project(merged, weights.Wo, weights.bo), p.config.batch_first,
                                      p.batched)
    case.assert_close(out, want, exp.output_tol / keep, "output", "attention computed from the returned weights")


@law("dropout", TRAINING_DROPOUT, draws(min_length=5, has_mask=False))
def dropout_active_in_training(case):
    """In training, dropout changes the output on every path (need_weights True or False): it differs from eval."""
    p = case.problem
    module, inputs, out, _ = case.run()
    module.eval()
    exp = case.expected(inputs, case.weights_of(module), p.replace(training=False))
    calm, _ = case.call(module, inputs, p.replace(training=False))
    case.requires("output_matches_reference", lambda: case.assert_close(calm, exp.output, exp.output_tol,
                                                                         "output in eval"))
    # The yardstick is the eval output's own mean rounding error, not the (looser) allowed
    # error: inactive dropout changes nothing (0), or by rounding alone; active dropout moves
    # the output by more, even in bfloat16 where a bias-dominated output resolves it by 1 ulp.
    # No masks are drawn, so at least 25 weights are visible: all kept has chance 0.5 ** 25.
    calm64 = calm.detach().double().cpu()
    rounding = float((calm64 - exp.output).abs().mean()) + 0.01 * torch.finfo(case.tol_dtype).eps * float(
        exp.output.abs().mean())
    change = float((out.detach().double().cpu() - calm64).abs().mean())
    weights = p.B * p.config.num_heads * p.L * (p.S + p.config.extra_keys)
    case.compared = True
    if change <= rounding:
        case.fail(f"output in training = output in eval (mean |difference| {change:.3g}, at most the eval "
                  f"output's mean rounding error {rounding:.3g}), but should differ: dropout={p.config.dropout} "
                  f"drops none of the {weights} attention weights with need_weights={p.need_weights}")
