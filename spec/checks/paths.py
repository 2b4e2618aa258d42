"""Path consistency: flags that must not change the result do not."""
import torch

from ..case import Case
from ..inputs import make_inputs
from ..requirements import BOTH_BATCH_LAYOUTS, CPU_AND_CUDA, RETURNS_WEIGHTS, UNBATCHED_AND_BATCHED
from .registry import law


@law("paths", RETURNS_WEIGHTS)
def need_weights_does_not_change_output(case):
    """need_weights=True and need_weights=False give the same output."""
    module, inputs, out, _ = case.run(need_weights=True)
    exp = case.expected(inputs, case.weights_of(module))
    out2, w2 = case.call(module, inputs, need_weights=False)
    case.assert_close(out2, out, 2 * exp.output_tol, "output with need_weights=False", "with need_weights=True")


@law("paths", BOTH_BATCH_LAYOUTS)
def batch_first_matches_sequence_first(case):
    """batch_first=True on (N, L, E) inputs gives the transposed output of batch_first=False on (L, N, E)."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    bf = p.with_config(batch_first=True)
    t = lambda x: x.transpose(0, 1)  # noqa: E731  (L, N, D) <-> (N, L, D)
    q = t(inputs.query)
    k = q if p.self_attention else t(inputs.key)
    moved = inputs.replace(query=q, key=k, value=k if inputs.value is inputs.key else t(inputs.value))
    out2, w2 = case.call(case.build(bf, weights=weights), moved, bf)
    case.assert_close(t(out2), out, 2 * exp.output_tol, "output with batch_first=True, transposed",
                      "with batch_first=False")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, "weights with batch_first=True", "with batch_first=False")


@law("paths", UNBATCHED_AND_BATCHED)
def unbatched_matches_batch_of_one(case):
    """Unbatched input gives the output of the same input as a batch of one."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    layout = next(lay for lay in case.scope.claimed("layout") if lay != "unbatched")
    one = p.replace(batch=1).with_config(batch_first=layout == "batch_first")
    ax = 0 if layout == "batch_first" else 1
    q = inputs.query.unsqueeze(ax)
    k = q if p.self_attention else inputs.key.unsqueeze(ax)
    batched = inputs.replace(
        query=q, key=k, value=k if inputs.value is inputs.key else inputs.value.unsqueeze(ax),
        key_padding_mask=None if inputs.key_padding_mask is None else inputs.key_padding_mask.unsqueeze(0))
    out1, w1 = case.call(case.build(one, weights=weights), batched, one)
    case.assert_close(out1.squeeze(ax), out, 2 * exp.output_tol, "output of the batch of one", "unbatched")
    if w is not None:
        case.assert_close(w1.squeeze(0), w, 2 * exp.weights_tol, "weights of the batch of one", "unbatched")


@law("paths")
def training_without_dropout_matches_eval(case):
    """With dropout 0, train mode gives the eval-mode output."""
    module, inputs, out, w = case.run()
    exp = case.expected(inputs, case.weights_of(module))
    module.train()
    out2, w2 = case.call(module, inputs)
    case.assert_close(out2, out, 2 * exp.output_tol, "output in train mode", "in eval mode")
    if w is not None:
        case.assert_close(w2, w, 2 * exp.weights_tol, "weights in train mode", "in eval mode")


@law("paths")
def no_grad_matches_grad(case):
    """In eval, calls under torch.no_grad() and torch.inference_mode() give the output of a call with autograd on."""
    p = case.problem
    module = case.build()
    exp = case.expected(make_inputs(p, case.device), case.weights_of(module))
    inputs = case.inputs()
    out, w = case.call(module, inputs)
    for name, context in (("torch.no_grad()", torch.no_grad), ("torch.inference_mode()", torch.inference_mode)):
        with context():
            fresh = case.inputs()  # tensors made outside inference mode cannot be mixed in; remake them
            out2, w2 = case.call(module, fresh)
        case.assert_close(out2.clone(), out, 2 * exp.output_tol, f"output under {name}", "with autograd on")
        if w is not None and w2 is not None:
            case.assert_close(w2.clone(), w, 2 * exp.weights_tol, f"weights under {name}", "with autograd on")


@law("paths", CPU_AND_CUDA, devices=("cuda",))
def cuda_matches_cpu(case):
    """The same call on CUDA and on the CPU agrees: NaN and infinities in the same places, values within tolerance."""
    p = case.problem
    module, inputs, out, w = case.run()
    weights = case.weights_of(module)
    exp = case.expected(inputs, weights)
    cpu = Case(case.adapter, p, "cpu", case.rule)  # same weights; inputs drawn on the CPU from the same seed
    out_cpu, w_cpu = cpu.call(cpu.build(weights=weights), cpu.inputs())
    where = f"on {case.device}"
    case.assert_same_nonfinite(out, out_cpu, f"output {where}", "on the CPU")
    case.assert_close(out, out_cpu, 2 * exp.output_tol, f"output {where}", "on the CPU")
    if w is not None or w_cpu is not None:
        case.assert_same_nonfinite(w, w_cpu, f"weights {where}", "on the CPU")
        case.assert_close(w, w_cpu, 2 * exp.weights_tol, f"weights {where}", "on the CPU")
