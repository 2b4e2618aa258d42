"""A :class:`Case`: one law applied to one implementation on one problem.

Laws are written against this object: it builds the module with random weights
and biases, makes the inputs, calls the implementation through its adapter and
validates what comes back, computes the float64 reference with its tolerance,
and turns any disagreement into a :class:`~attnspec.errors.ConformanceFailure` in
the suite's one message grammar.
"""
from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass

import torch

from . import reference, tolerances
from .adapter import parameters_replaced_by_grads
from .config import Problem
from .errors import CannotJudge, ConformanceFailure, Mismatch, SuiteError, fmt_index, fmt_value
from .inputs import Inputs, generator, layout_shape, make_inputs
from .repro import adapter_origin, repro_snippet
from .requirements import decide, dtype_name, scope_of
from .verdict import Verdict
from .weights import CanonicalWeights, randomized


@dataclass
class Expected:
    """The float64 reference for one call, with the allowed error of each result."""

    output: torch.Tensor
    weights: torch.Tensor | None
    output_tol: float
    weights_tol: float


@contextlib.contextmanager
def tf32_disabled():
    """Checks run with TF32 matmuls off (see :data:`attnspec.tolerances.TF32_ALLOWED`)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tolerances.TF32_ALLOWED
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class BaseCase:
    """What every law's case has, whatever the contract: the comparisons (each in the suite's one message
    grammar), the guard around an implementation's own code, and the verdict. :class:`Case` (modules) and
    :class:`attnspec.kernel.case.KernelCase` (kernels) build and call implementations on top of it; a problem
    needs ``dtype``, ``seed``, ``to_dict()`` and ``short()``."""

    def __init__(self, adapter, problem: Problem, device="cpu", law=None, scope=None):
        self.adapter, self.problem, self.device, self.rule = adapter, problem, device, law
        self._scope = scope
        self.law = "" if law is None else law.name
        self.worst_ratio = 0.0
        self.compared = False  # some comparison of this example could have failed
        self.cannot_judge = ""  # why this example could not judge the law (BaseCase.requires), if it could not
        self.targets: dict[str, float] = {}  # label -> worst error-to-tolerance ratio, for hypothesis.target

    @property
    def scope(self):
        """What the implementation claims for this law: the one answer of :func:`attnspec.requirements.decide`
        (the runner passes it; a replay decides it again). Laws and ``call`` read claims from it."""
        if self._scope is None:
            claim = decide(self.rule, self.adapter.capabilities, self.device, self.problem.dtype) \
                if self.rule is not None else None
            self._scope = claim.scope if claim is not None and claim.claimed else \
                scope_of(self.adapter.capabilities, self.device)
        return self._scope

    @property
    def tol_dtype(self) -> torch.dtype:
        """The dtype whose tolerance applies: the problem's."""
        return self.problem.dtype

    def guard(self, fn, what: str):
        """Run an implementation's code; any exception becomes a failure naming ``what``."""
        try:
            return fn()
        except (Mismatch, ConformanceFailure):
            raise
        except Exception as exc:  # the implementation's own error, reported, not propagated
            raise Mismatch(f"{what} raised {type(exc).__name__}: {exc}") from exc

    # -- comparisons ------------------------------------------------------------------
    def assert_close(self, actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str,
                     expected_name: str = "the reference", spread_of: torch.Tensor | None = None):
        """``actual`` within ``tol`` of ``expected``; non-finite values match only themselves.

        As in ``torch.testing.assert_close``: NaN matches only NaN, an infinity only the
        same infinity, and a finite value never a non-finite one. Marks the example as
        compared when ``tol`` is informative (:func:`attnspec.tolerances.informative`) against
        ``expected``, or against ``spread_of`` where the law names the wider quantity.
        """
        tol = tolerances.check_tolerance(tol, f"{self.law}: {what}")
        if actual is None:
            raise Mismatch(f"{what} = None, but should be a tensor like {expected_name}")
        self.assert_shape(actual, tuple(expected.shape), what)
        a = actual.detach().to("cpu", torch.float64)
        e = expected.detach().to("cpu", torch.float64)
        self.assert_same_nonfinite(a, e, what, expected_name)
        if e.numel() == 0:
            return 0.0
        finite = torch.isfinite(e)  # the same positions in ``a``, after the check above
        diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
        worst = float(diff.max())
        ratio = worst / tol if tol > 0 else (0.0 if worst == 0 else float("inf"))
        self.worst_ratio = max(self.worst_ratio, ratio)
        self.targets[what] = max(self.targets.get(what, 0.0), min(ratio, 1e6))
        self.compared |= tolerances.informative(tol, e if spread_of is None else spread_of)
        if worst > tol:
            idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
            n = int((diff > tol).sum())
            raise Mismatch(f"{fmt_index(what, idx)} = {fmt_value(a[idx])}, but should be {fmt_value(e[idx])} "
                           f"like {expected_name} (|error| {worst:.3g} > allowed {tol:.3g}; "
                           f"{n}/{a.numel()} elements off){self._precision_hint(a, worst, tol)}", ratio=ratio)
        return ratio

    def _precision_hint(self, actual: torch.Tensor, worst: float, tol: float) -> str:
        """A possible cause, where a contract has the evidence for one (modules: see output_matches_reference)."""
        return ""

    def assert_equal(self, actual: torch.Tensor, expected: torch.Tensor, what: str,
                     expected_name: str = "before"):
        """Bit-identical (NaN equal to NaN)."""
        self.assert_shape(actual, tuple(expected.shape), what)
        a, e = actual.detach().cpu(), expected.detach().cpu()
        same = (a == e) | (a.isnan() & e.isnan()) if a.is_floating_point() else (a == e)
        self.compared |= e.numel() > 0
        if not bool(same.all()):
            idx = tuple((~same).nonzero()[0].tolist())
            raise Mismatch(f"{fmt_index(what, idx)} = {fmt_value(a[idx].item())}, but should be "
                           f"{fmt_value(e[idx].item())} as {expected_name} (must be bit-identical; "
                           f"{int((~same).sum())}/{a.numel()} elements differ)")

    def assert_same_nonfinite(self, actual, expected, what: str, expected_name: str):
        """NaN where ``expected`` has NaN, and infinities of the same sign where it has them, nowhere else."""
        if actual is None or expected is None:
            raise Mismatch(f"{what} = {_kind(actual)}, but should be {_kind(expected)} like {expected_name}")
        self.assert_shape(actual, tuple(expected.shape), what)
        a, e = actual.detach().to("cpu", torch.float64), expected.detach().to("cpu", torch.float64)
        differs = (a.isnan() != e.isnan()) | (a.isposinf() != e.isposinf()) | (a.isneginf() != e.isneginf())
        self.compared |= bool((~torch.isfinite(e)).any())
        if bool(differs.any()):
            idx = tuple(differs.nonzero()[0].tolist())
            why = "a value not finite where the expected one is" if bool(torch.isfinite(e[idx])) else \
                "NaN matches only NaN, an infinity only the same infinity"
            raise Mismatch(f"{fmt_index(what, idx)} = {fmt_value(a[idx])}, but should be {fmt_value(e[idx])} "
                           f"like {expected_name} ({why}; {int(differs.sum())}/{a.numel()} elements differ)",
                           ratio=float("inf"))

    def assert_finite(self, actual: torch.Tensor, what: str, why: str):
        """Every element of ``actual`` is finite."""
        bad = ~torch.isfinite(actual.detach().cpu())
        self.compared |= actual.numel() > 0
        if bool(bad.any()):
            idx = tuple(bad.nonzero()[0].tolist())
            raise Mismatch(f"{fmt_index(what, idx)} = {fmt_value(actual.detach().cpu()[idx].double())}, but "
                           f"should be finite: {why} ({int(bad.sum())}/{actual.numel()} elements not finite)",
                           ratio=float("inf"))

    def assert_shape(self, actual: torch.Tensor, shape: tuple, what: str):
        if tuple(actual.shape) != tuple(shape):
            raise Mismatch(f"{what}.shape = {tuple(actual.shape)}, but should be {tuple(shape)}")

    def fail(self, detail: str):
        raise Mismatch(detail)

    def requires(self, law: str, check):
        """Run ``check``, a property this law stands on; if it fails, this example cannot judge the law.

        Used where a law measures one thing against another that must be right first (the
        dropout laws measure training against eval, which must match the reference). The example
        then compares nothing (:class:`~attnspec.errors.CannotJudge`): the law is inconclusive, never
        failed, where too few examples can judge it, and the verdict says why."""
        try:
            check()
        except Mismatch as m:
            self.compared = False
            raise CannotJudge(f"on such problems the module already breaks {law} ({m.detail})") from None

    # -- reporting ----------------------------------------------------------------------
    def verdict(self, status: str, detail: str) -> Verdict:
        """A :class:`~attnspec.verdict.Verdict` of this case: the law, the implementation, the problem, the repro."""
        rule, p = self.rule, self.problem
        return Verdict(
            impl=self.adapter.name, law=self.law, family=rule.family if rule else "", device=self.device,
            dtype=dtype_name(p.dtype), status=status, severity=rule.severity if rule else "results",
            statement=rule.statement if rule else "", source=rule.source if rule else "",
            origin=adapter_origin(self.adapter), detail=detail, problem=p.to_dict(), problem_text=p.short(),
            held_to="" if self.tol_dtype == p.dtype else dtype_name(self.tol_dtype),
            repro=repro_snippet(self.adapter, self.law, p, self.device), requires=rule.requirements if rule else (),
            features=rule.features if rule else ())

    def failure(self, m: Mismatch) -> ConformanceFailure:
        verdict = self.verdict("fail", m.detail).replace(ratio=m.ratio)
        return ConformanceFailure(verdict.message, verdict=verdict)

    def error(self, exc: Exception) -> SuiteError:
        """``exc`` escaped the law's own code (not the module's call): where it was raised, and on what problem.

        The frame named is the innermost one outside torch: the law, a helper of attnspec's,
        or the adapter's ``get_weights`` / ``set_weights``."""
        frames = traceback.extract_tb(exc.__traceback__)
        torch_dir = os.path.dirname(torch.__file__)
        frame = next((f for f in reversed(frames) if not f.filename.startswith(torch_dir)), frames[-1] if frames else None)
        at = f"\nraised at {frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}" if frame else ""
        verdict = self.verdict("error", f"attnspec could not decide this law: {type(exc).__name__}: {exc}{at}")
        return SuiteError(verdict.message, verdict=verdict)


class Case(BaseCase):
    """One law (an :class:`attnspec.checks.Law`, or None in self-tests) on one implementation and problem."""

    @property
    def tol_dtype(self) -> torch.dtype:
        """The dtype whose tolerance applies: the problem's, or the lower one the module declares it computes in."""
        declared = getattr(self.adapter, "capabilities", None)
        declared = declared.compute_dtype if declared is not None else None
        return tolerances.lower_precision(self.problem.dtype, declared)

    # -- building and calling -------------------------------------------------------
    def build(self, problem: Problem | None = None, weights: CanonicalWeights | None = None):
        """A module for ``problem`` with seeded random weights and non-zero biases (or ``weights``)."""
        p = problem or self.problem
        module = self.guard(lambda: self.adapter.build(p.config, dtype=p.dtype, device=self.device),
                            "build(config)")
        if weights is None:
            current = self.guard(lambda: self.adapter.get_weights(module), "get_weights(module)")
            weights = randomized(current.to(torch.float64, "cpu"), generator(p.seed, 2))
        self.guard(lambda: self.adapter.set_weights(module, weights), "set_weights(module, weights)")
        module.train(p.training)
        return module

    def weights_of(self, module) -> CanonicalWeights:
        """The module's weights in canonical form, as float64 on the CPU."""
        weights = self.guard(lambda: self.adapter.get_weights(module), "get_weights(module)")
        declared, H = self.adapter.capabilities.out_projection, self.problem.config.num_heads
        if weights.Wo is None and not (declared == "never" or (declared == "multi-head" and H == 1)):
            raise Mismatch(f"get_weights gave Wo = None at num_heads={H}, but capabilities.out_projection="
                           f"{declared!r} says the module has an output projection there")
        if weights.Wo is None and weights.bo is not None:
            raise Mismatch("get_weights gave an output bias bo but no output projection Wo")
        if weights.Wo is not None and declared == "never":
            raise Mismatch("get_weights gave an output projection Wo, but capabilities.out_projection='never'")
        return weights.to(torch.float64, "cpu")

    def inputs(self, problem: Problem | None = None) -> Inputs:
        return make_inputs(problem or self.problem, self.device)

    def call(self, module, inputs: Inputs, problem: Problem | None = None, **flags):
        """Call the implementation; return ``(output, weights)`` after checking their types."""
        p = problem or self.problem
        flags = {"need_weights": p.need_weights, "average_attn_weights": p.average_attn_weights, **flags}
        if self.scope.claimed("is_causal") != (False,):  # the call contract carries the flag where it is claimed
            flags.setdefault("is_causal", p.is_causal)
        if self.scope.caps.rope is not None:  # and the positions, where RoPE is declared
            q_pos, k_pos = p.replace(rope=self.scope.caps.rope).position_ids()
            flags.setdefault("positions", q_pos.to(self.device))
            flags.setdefault("key_positions", k_pos.to(self.device))
        with tf32_disabled():
            result = self.guard(lambda: self.adapter.call(module, inputs.query, inputs.key, inputs.value,
                                                          **inputs.kwargs(), **flags), "call")
        if not (isinstance(result, tuple) and len(result) == 2):
            raise Mismatch(f"call returned {type(result).__name__}, but should return a tuple "
                           "(output, weights or None)")
        out, w = result
        if not isinstance(out, torch.Tensor):
            raise Mismatch(f"output is {type(out).__name__}, but should be a torch.Tensor")
        if w is not None and not isinstance(w, torch.Tensor):
            raise Mismatch(f"weights are {type(w).__name__}, but should be a torch.Tensor or None")
        if flags["need_weights"] and w is None and True in self.scope.claimed("need_weights"):
            raise Mismatch("weights = None, but should be a tensor (need_weights=True)")
        if not flags["need_weights"] and w is not None:
            raise Mismatch(f"weights.shape = {tuple(w.shape)}, but should be None (need_weights=False)")
        c = p.config
        self.assert_shape(out, layout_shape(p, p.L, c.embed_dim), "output")
        if w is not None:
            heads = () if flags["average_attn_weights"] else (c.num_heads,)
            self.assert_shape(w, ((p.B,) if p.batched else ()) + heads + (p.L, p.S + c.extra_keys), "weights")
        return out, w

    def run(self, problem: Problem | None = None, module=None, inputs: Inputs | None = None, **flags):
        """Build (unless given), make inputs (unless given) and call: ``(module, inputs, out, w)``."""
        p = problem or self.problem
        module = module if module is not None else self.build(p)
        inputs = inputs if inputs is not None else self.inputs(p)
        out, w = self.call(module, inputs, p, **flags)
        return module, inputs, out, w

    # -- the reference --------------------------------------------------------------
    def reference(self, inputs: Inputs, weights: CanonicalWeights, problem: Problem | None = None,
                  dtype=torch.float64, scale_keys=False, need_weights=None):
        p = problem or self.problem
        cast = lambda t: None if t is None else t.detach().to(device="cpu" if dtype == torch.float64 else self.device,  # noqa: E731
                                                                  dtype=dtype if t.is_floating_point() else t.dtype)
        w = weights.to(dtype, "cpu" if dtype == torch.float64 else self.device)
        return reference.multi_head_attention(
            cast(inputs.query), cast(inputs.key), cast(inputs.value), w, num_heads=p.config.num_heads,
            key_padding_mask=cast(inputs.key_padding_mask), attn_mask=cast(inputs.attn_mask),
            need_weights=p.need_weights if need_weights is None else need_weights,
            average_attn_weights=p.average_attn_weights, batch_first=p.config.batch_first,
            add_zero_attn=p.config.add_zero_attn, scale_keys=scale_keys, **positional(p))

    def logits(self, inputs: Inputs, weights: CanonicalWeights, problem: Problem | None = None):
        """The float64 logits (N, H, L, S') before masking."""
        p = problem or self.problem
        cast = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        logits, _ = reference.attention_logits(cast(inputs.query), cast(inputs.key), cast(inputs.value),
                                               weights, num_heads=p.config.num_heads,
                                               batch_first=p.config.batch_first,
                                               add_zero_attn=p.config.add_zero_attn, rope=p.rope,
                                               positions=p.position_ids(), qk_norm=p.qk_norm,
                                               scale=p.config.softmax_scale, softcap=p.config.softcap)
        if weights.alibi_slopes is not None:  # (N, H, L, S) + (1, H, L, S)
            logits = logits + reference.alibi_bias(weights.alibi_slopes, p.L, p.S, alignment=p.causal_alignment)
        return logits

    def expected(self, inputs: Inputs, weights: CanonicalWeights, problem: Problem | None = None) -> Expected:
        """Reference output and weights, with tolerances from same-dtype baselines."""
        p = problem or self.problem
        out64, w64 = self.reference(inputs, weights, p)
        plain_dtype, _ = tolerances.baseline_dtype(self.tol_dtype)
        plain = [self.reference(inputs, weights, p, dtype=plain_dtype, scale_keys=s) for s in (False, True)]
        logits = tolerances.magnitude(self.logits(inputs, weights, p))
        out_tol = tolerances.bound("output", self.tol_dtype, out64, [o for o, _ in plain],
                                   terms=tolerances.reduction_length(p, "output"), logits=logits)
        w_tol = 0.0 if w64 is None else tolerances.bound("weights", self.tol_dtype, w64, [w for _, w in plain],
                                                         terms=tolerances.reduction_length(p, "weights"),
                                                         logits=logits)
        return Expected(out64, w64, out_tol, w_tol)

    def assert_matches_reference(self, what: str = "", expected_name: str = "the reference", module=None):
        """Run the problem (on ``module``, else one built) and compare the output (and weights, if returned) with
        the reference: ``what`` names the outputs (``"output{what}"``). Returns ``(module, inputs, out, w, expected)``."""
        module, inputs, out, w = self.run(module=module)
        exp = self.expected(inputs, self.weights_of(module))
        self.assert_close(out, exp.output, exp.output_tol, f"output{what}", expected_name)
        if w is not None:
            self.assert_close(w, exp.weights, exp.weights_tol, f"weights{what}", expected_name)
        return module, inputs, out, w, exp

    # -- gradients ----------------------------------------------------------------------
    def gradients(self, module, inputs: Inputs, upstream: torch.Tensor, problem: Problem | None = None):
        """d(sum(output * upstream)) w.r.t. query, key, value and every canonical weight."""
        p = problem or self.problem
        leaves = _leaf_inputs(inputs, p)
        module.zero_grad(set_to_none=True)
        out, _ = self.call(module, leaves, p)
        self.guard(lambda: (out * upstream.to(out.device, out.dtype)).sum().backward(), "backward")
        grads = {n: getattr(leaves, n).grad for n in _grad_names(p)}
        for n, g in grads.items():
            if g is None:
                raise Mismatch(f"grad {n} = None, but should be a tensor (the output does not depend on {n})")
        with parameters_replaced_by_grads(module):
            grads.update({f"d{n}": t for n, t in self.weights_of(module).items()})
        return grads

    def assert_gradients_match(self, module, inputs: Inputs, weights: CanonicalWeights, upstream,
                               what: str = "grad"):
        """Gradients of sum(output * upstream) equal the reference's, for inputs and every weight."""
        p = self.problem
        got = self.gradients(module, inputs, upstream)
        ref = self.reference_gradients(inputs, weights, upstream)
        plain = self.reference_gradients(inputs, weights, upstream, dtype=tolerances.baseline_dtype(self.tol_dtype)[0])
        # backward multiplies gradients by inputs: the noise floor is at the size of those products
        largest = max(tolerances.magnitude(t) for t in ref.values()) * max(
            1.0, *(tolerances.magnitude(t.double()) for t in (inputs.query, inputs.key, inputs.value)))
        for name, expected in ref.items():  # ``gradients`` gives every name a tensor (zeros where None)
            tol = tolerances.bound("gradient", self.tol_dtype, expected, [plain[name]], scale=largest,
                                   terms=tolerances.reduction_length(p, "gradient"))
            self.assert_close(got[name], expected, tol, f"{what} {name}")

    def reference_gradients(self, inputs: Inputs, weights: CanonicalWeights, upstream, problem=None,
                            dtype=torch.float64):
        p = problem or self.problem
        leaves = _leaf_inputs(inputs.__class__(**{n: None if t is None else
                                                  t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
                                                  for n, t in vars(inputs).items()}), p)
        w = weights.map(lambda t: t.detach().to("cpu", dtype).requires_grad_(True))
        out, _ = reference.multi_head_attention(
            leaves.query, leaves.key, leaves.value, w, num_heads=p.config.num_heads,
            key_padding_mask=leaves.key_padding_mask, attn_mask=leaves.attn_mask, need_weights=False,
            batch_first=p.config.batch_first, add_zero_attn=p.config.add_zero_attn, **positional(p))
        (out * upstream.to(dtype)).sum().backward()
        grads = {n: getattr(leaves, n).grad for n in _grad_names(p)}
        grads.update({f"d{n}": t.grad for n, t in w.items()})
        return grads

def positional(p: Problem) -> dict:
    """The reference's arguments beyond nn.MultiheadAttention's: the causal flag and the window, aligned; RoPE;
    QK-norm; the logits' scale and soft cap."""
    return dict(is_causal=p.is_causal, window=p.config.window, alignment=p.causal_alignment, rope=p.rope,
                positions=p.position_ids(), qk_norm=p.qk_norm, scale=p.config.softmax_scale, softcap=p.config.softcap)


def _kind(t) -> str:
    return "None" if t is None else f"a tensor of shape {tuple(t.shape)}"


def _grad_names(p: Problem):
    if p.self_attention:
        return ("query",)
    return ("query", "key") if p.key_is_value else ("query", "key", "value")


def _leaf_inputs(inputs: Inputs, p: Problem) -> Inputs:
    leaf = lambda t: t.detach().clone().requires_grad_(True)  # noqa: E731
    if p.self_attention:
        x = leaf(inputs.query)
        return inputs.replace(query=x, key=x, value=x)
    key = leaf(inputs.key)
    return inputs.replace(query=leaf(inputs.query), key=key, value=key if p.key_is_value else leaf(inputs.value))
