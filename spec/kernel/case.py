"""A :class:`KernelCase`: one kernel law applied to one kernel on one :class:`KernelProblem`.

Kernel laws are written against it: it makes the tensors, calls the kernel through its adapter and
validates what comes back (the output's shape, dtype and device; the LSE's, converted from the declared
base and layout), computes the float64 reference and the bounds of :mod:`attnspec.tolerances` from
same-dtype baselines, and compares in the suite's one message grammar (:class:`attnspec.case.BaseCase`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .. import reference as reference_ops
from .. import tolerances
from ..case import BaseCase, tf32_disabled
from ..errors import Mismatch
from . import reference
from .cache import CacheInputs, CacheProblem, item_inputs, make_cache_inputs
from .problem import KernelInputs, KernelProblem, generator, make_inputs
from .varlen import VarlenInputs, VarlenProblem, make_varlen_inputs, segment_inputs

# The LSE is float32 whatever the inputs (flash-attn's, FlexAttention's): its bound is float32's.
LSE_DTYPE = torch.float32
# The mean error may be this many times the baselines' mean error, plus this share of the max bound's floor:
# the mean catches an error spread thin over every element, which the max bound (4x the baseline's largest
# error) lets through.
MEAN_K, MEAN_FLOOR_SHARE = 3.0, 0.25
WEIGHT_THAT_COUNTS = 1e-4  # logits whose softmax weight is below this do not set the rounding floor


@dataclass
class KernelExpected:
    """The float64 reference of one call, with its bounds: ``out_tol`` (max error), ``mean_tol`` (mean error),
    ``lse_tol`` (max LSE error)."""

    out: torch.Tensor
    lse: torch.Tensor
    out_tol: float
    mean_tol: float
    lse_tol: float


def _same(inputs, dtype):
    """A segment's tensors, whatever the dtype (the reference casts them)."""
    return inputs


def _item(inputs, p, b, dtype):
    """Item b's tensors in ``dtype``, its rotation computed there (:func:`attnspec.kernel.cache.item_inputs`)."""
    return item_inputs(inputs, p, b, dtype)


def _brief(value) -> str:
    """A call's argument as a message shows it: small integer tensors by value, others by shape."""
    if isinstance(value, torch.Tensor):
        small = not value.is_floating_point() and value.numel() <= 24
        return str(value.tolist()) if small else f"<{tuple(value.shape)}>"
    return repr(value)


def _shown(kwargs: dict) -> str:
    return "".join(f", {n}={_brief(v)}" for n, v in kwargs.items())


class KernelCase(BaseCase):
    """One kernel law (an :class:`attnspec.checks.Law` of the kernel contract) on one kernel and problem."""

    problem: KernelProblem

    def inputs(self, problem: KernelProblem | None = None):
        """The problem's tensors: :class:`KernelInputs`, or a varlen or cache step's (by the problem's kind)."""
        p = problem or self.problem
        make = make_varlen_inputs if isinstance(p, VarlenProblem) else \
            make_cache_inputs if isinstance(p, CacheProblem) else make_inputs
        return make(p, self.device)

    def call(self, inputs: KernelInputs, problem: KernelProblem | None = None, **options):
        """Call the kernel with the problem's options (``options`` add to or replace them); ``(out, lse or None)``,
        the LSE natural-log, (B, Hq, Lq), after checking both."""
        p = problem or self.problem
        kwargs = self._options(p, inputs, options)
        with tf32_disabled():
            result = self.guard(lambda: self.adapter.attend(inputs.q, inputs.k, inputs.v, **kwargs),
                                f"attn(q, k, v{_shown(kwargs)})")
        out, lse = self._split(result, kwargs, "attn")
        self.check_output(out, inputs, (p.B, p.Lq, p.Hq, p.dv))
        return out, (None if lse is None else self.canonical_lse(lse, inputs, (p.B, p.Hq, p.Lq)))

    def call_varlen(self, inputs: VarlenInputs, problem: VarlenProblem | None = None, **options):
        """Call a varlen kernel on ``inputs``: ``(out (Tq, Hq, Dv), lse (Hq, Tq) natural-log or None)``, checked."""
        p = problem or self.problem
        kwargs = self._options(p, inputs, options)
        if inputs.seqused_k is not None:
            kwargs.setdefault("seqused_k", inputs.seqused_k)
        call = (inputs.cu_seqlens_q, inputs.cu_seqlens_k, p.max_seqlen_q, p.max_seqlen_k)
        shown = (f"attn_varlen(q, k, v, cu_seqlens_q={inputs.cu_seqlens_q.tolist()}, cu_seqlens_k="
                 f"{inputs.cu_seqlens_k.tolist()}, max_seqlen_q={p.max_seqlen_q}, max_seqlen_k={p.max_seqlen_k}"
                 f"{_shown(kwargs)})")
        with tf32_disabled():
            result = self.guard(lambda: self.adapter.attend_varlen(inputs.q, inputs.k, inputs.v, *call, **kwargs),
                                shown)
        out, lse = self._split(result, kwargs, "attn_varlen")
        T = inputs.q.shape[0]
        self.check_output(out, inputs, (T, p.Hq, p.dv))
        if lse is None:
            return out, None
        return out, self.canonical_lse(lse, inputs, (1, p.Hq, T), packed=True)  # (Hq, Tq)

    def call_cache(self, inputs: CacheInputs, problem: CacheProblem | None = None, **options):
        """Call a cache step on ``inputs`` (its caches are written): ``(out (B, Lq, Hq, Dv), lse (B, Hq, Lq) or None)``."""
        p = problem or self.problem
        kwargs = self._options(p, inputs, options)
        kwargs["cache_seqlens"] = inputs.cache_seqlens
        for name in ("k", "v", "cache_batch_idx", "block_table", "rotary_cos", "rotary_sin"):
            if getattr(inputs, name) is not None:
                kwargs.setdefault(name, getattr(inputs, name))
        if inputs.rotary_cos is not None:
            kwargs.setdefault("rotary_interleaved", p.rotary == "interleaved")
        shown = f"attn_with_kvcache(q, k_cache, v_cache{_shown(kwargs)})"
        with tf32_disabled():
            result = self.guard(lambda: self.adapter.attend_cache(inputs.q, inputs.k_cache, inputs.v_cache, **kwargs),
                                shown)
        out, lse = self._split(result, kwargs, "attn_with_kvcache")
        self.check_output(out, inputs, (p.B, p.Lq, p.Hq, p.dv))
        return out, (None if lse is None else self.canonical_lse(lse, inputs, (p.B, p.Hq, p.Lq)))

    @staticmethod
    def _options(p, inputs, options) -> dict:
        kwargs = {**p.options(), **options}
        if inputs.alibi_slopes is not None and "alibi_slopes" not in options:
            kwargs["alibi_slopes"] = inputs.alibi_slopes
        return kwargs

    @staticmethod
    def _split(result, kwargs, name: str):
        wants_lse = kwargs.get("return_lse", False)
        if wants_lse != isinstance(result, tuple):
            raise Mismatch(f"{name} returned {type(result).__name__}, but should return "
                           f"{'(out, lse)' if wants_lse else 'the output tensor alone'} (return_lse={wants_lse})")
        if wants_lse and len(result) != 2:
            raise Mismatch(f"{name} returned a tuple of {len(result)}, but should return (out, lse)")
        return result if wants_lse else (result, None)

    def check_output(self, out, inputs, shape: tuple) -> None:
        """The output's type, shape, dtype (q's) and device (q's)."""
        if not isinstance(out, torch.Tensor):
            raise Mismatch(f"output is {type(out).__name__}, but should be a torch.Tensor")
        self.assert_shape(out, shape, "output")
        if out.dtype != inputs.q.dtype:
            raise Mismatch(f"output.dtype = {out.dtype}, but should be q's, {inputs.q.dtype}")
        if out.device != inputs.q.device:
            raise Mismatch(f"output.device = {out.device}, but should be q's, {inputs.q.device}")

    def canonical_lse(self, lse, inputs, heads_first: tuple, packed: bool = False) -> torch.Tensor:
        """The LSE as natural log, ``heads_first`` (B, Hq, Lq), after checking its type, dtype and declared layout
        (``"BLH"``: (B, Lq, Hq)); ``packed``: a varlen call's, (Hq, Tq) (or (Tq, Hq)), with B = 1 left out."""
        caps = self.adapter.capabilities
        if not isinstance(lse, torch.Tensor):
            raise Mismatch(f"lse is {type(lse).__name__}, but should be a torch.Tensor")
        allowed = (LSE_DTYPE,) + ((torch.float64,) if inputs.q.dtype == torch.float64 else ())
        if lse.dtype not in allowed:
            raise Mismatch(f"lse.dtype = {lse.dtype}, but should be float32 (or float64 for float64 inputs)")
        B, H, L = heads_first
        layouts = {"BHL": (B, H, L), "BLH": (B, L, H)}
        if packed:
            layouts = {name: shape[1:] for name, shape in layouts.items()}
        got, declared = tuple(lse.shape), layouts[caps.lse_layout]
        if got != declared:
            other = "BLH" if caps.lse_layout == "BHL" else "BHL"
            hint = f" (that is lse_layout={other!r}: declare it)" if got == layouts[other] else ""
            raise Mismatch(f"lse.shape = {got}, but should be {declared} (lse_layout={caps.lse_layout!r}){hint}")
        if caps.lse_layout == "BLH":
            lse = lse.transpose(-2, -1)  # (B, Hq, Lq), or (Hq, Tq)
        return lse * math.log(2) if caps.lse_base == "2" else lse

    # -- the reference ----------------------------------------------------------------------
    def reference(self, inputs: KernelInputs, problem: KernelProblem | None = None, *, dtype=torch.float64,
                  scale_keys=False):
        """``(out, lse)`` of the reference on these inputs, computed in ``dtype`` (float64: on the CPU)."""
        p = problem or self.problem
        device = "cpu" if dtype == torch.float64 else self.device
        out, lse, _ = reference.of_problem(p, inputs, dtype=dtype, device=device, scale_keys=scale_keys)
        return out, lse

    def logit_floor(self, inputs: KernelInputs, p: KernelProblem) -> float:
        """The largest |logit| among those whose softmax weight counts (see :mod:`attnspec.tolerances`: rounding
        a logit of size Λ moves its weight by a relative eps·Λ)."""
        scores = reference.final_scores(p, inputs)  # (B, Hq, Lq, Lk), -inf where hidden
        weights = reference_ops.softmax_zero_on_empty(scores)  # (B, Hq, Lq, Lk)
        counted = scores[(weights > WEIGHT_THAT_COUNTS) & torch.isfinite(scores)]
        return float(counted.abs().max()) if counted.numel() else 0.0

    def expected(self, inputs, problem: KernelProblem | None = None) -> KernelExpected:
        """The float64 reference output and LSE, with their bounds (see :mod:`attnspec.tolerances`). ``inputs``: the
        dense call's tensors, or a function of a dtype giving them as a plain computation in that dtype would
        (a cache step's rotary turns the new keys in the kernel's dtype)."""
        p = problem or self.problem
        at = inputs if callable(inputs) else (lambda dtype: inputs)
        factor = self.adapter.capabilities.tolerance_factor
        x64 = at(torch.float64)
        out64, lse64 = self.reference(x64, p)
        plain_dtype, _ = tolerances.baseline_dtype(self.tol_dtype)
        plain = [self.reference(at(plain_dtype), p, dtype=plain_dtype, scale_keys=s) for s in (False, True)]
        logits = self.logit_floor(x64, p)
        terms = p.Lk + max(p.D, p.dv)
        out_tol = tolerances.bound("output", self.tol_dtype, out64, [o for o, _ in plain], terms=terms, logits=logits)
        floor = tolerances.bound("output", self.tol_dtype, out64, [], terms=terms, logits=logits)
        _, scale = tolerances.baseline_dtype(self.tol_dtype)
        mean_base = max(tolerances.mean_error(o, out64) for o, _ in plain) * scale
        lse_dtype = LSE_DTYPE if self.tol_dtype in (torch.float64, torch.float32) else self.tol_dtype
        lse_plain = [reference.of_problem(p, at(lse_dtype), dtype=lse_dtype, device="cpu", scale_keys=s)[1].float()
                     for s in (False, True)]
        lse_tol = tolerances.bound("lse", LSE_DTYPE, lse64, lse_plain, terms=p.Lk, logits=logits)
        return KernelExpected(out64, lse64, factor * out_tol, factor * (MEAN_K * mean_base + MEAN_FLOOR_SHARE * floor),
                              factor * lse_tol)

    # -- comparisons --------------------------------------------------------------------------
    def assert_output(self, out, exp: KernelExpected, what: str = "output", expected_name: str = "the reference",
                      tol_scale: float = 1.0):
        """``out`` within the max bound of ``exp.out``, and its mean error within the mean bound."""
        self.assert_close(out, exp.out, tol_scale * exp.out_tol, what, expected_name)
        mean = tolerances.mean_error(out, exp.out)
        if mean > tol_scale * exp.mean_tol:
            raise Mismatch(f"mean |{what} - {expected_name}| = {mean:.3g}, but should be at most {tol_scale * exp.mean_tol:.3g}"
                           f" ({MEAN_K:g}x the plain computation's mean error): every element is a little off, by more "
                           "than rounding explains", ratio=mean / max(tol_scale * exp.mean_tol, 1e-300))

    def assert_lse(self, lse, exp: KernelExpected, what: str = "lse", expected_name: str = "the reference"):
        self.assert_close(lse, exp.lse, exp.lse_tol, what, expected_name)

    # -- varlen calls and cache steps: each segment or item is a dense problem ------------------------------
    def parts(self, inputs, problem=None) -> list:
        """``(name, rows, dense problem, tensors)`` of each segment of a varlen call (``rows``: its slice of the packed
        rows) or item of a cache step (``rows``: its index); ``tensors``: a function of a dtype (see :meth:`expected`)."""
        p = problem or self.problem
        if isinstance(p, VarlenProblem):
            cu = p.cu_q
            return [(f"segment {b}", slice(cu[b], cu[b + 1]), p.segment(b),
                     functools.partial(_same, segment_inputs(inputs, p, b))) for b in range(p.B)]
        return [(f"item {b}", b, p.item(b), functools.partial(_item, inputs, p, b)) for b in range(p.B)]

    def expected_parts(self, inputs, problem=None) -> list:
        """``(name, rows, KernelExpected)`` of each segment or item (:meth:`parts`)."""
        return [(name, rows, self.expected(at, part)) for name, rows, part, at in self.parts(inputs, problem)]

    def assert_parts(self, out, lse, expected: list, what: str = "output", expected_name: str = "the reference",
                     tol_scale: float = 1.0) -> None:
        """Each segment's (or item's) rows of ``out`` (and ``lse``, where not None) against its expected values."""
        for name, rows, exp in expected:
            part = out[rows] if isinstance(rows, slice) else out[rows:rows + 1]  # (Lq_b, Hq, Dv) or (1, Lq, Hq, Dv)
            ref = exp.out[0] if isinstance(rows, slice) else exp.out
            self.assert_output(part, KernelExpected(ref, exp.lse, exp.out_tol, exp.mean_tol, exp.lse_tol),
                               f"{what} of {name}", expected_name, tol_scale)
            if lse is not None:
                got = lse[:, rows] if isinstance(rows, slice) else lse[rows:rows + 1]  # (Hq, Lq_b) or (1, Hq, Lq)
                self.assert_close(got, exp.lse[0] if isinstance(rows, slice) else exp.lse, exp.lse_tol,
                                  f"lse of {name}", expected_name)

    def _precision_hint(self, actual: torch.Tensor, worst: float, tol: float) -> str:
        """Where a float64 call's result is made of float32 numbers only (the evidence that the kernel computes,
        or at least rounds, in float32), say so; a logic bug leaves no such trace."""
        float64_bound = tol < 1e-9  # an LSE's bound is float32's whatever the dtype: no hint there
        finite = actual[torch.isfinite(actual)]
        if self.tol_dtype != torch.float64 or not float64_bound or finite.numel() < 2:
            return ""
        if bool((finite.float().double() == finite).all()):
            return ("; every value of this float64 result is a float32 number: the kernel computes in float32 (if "
                    "it does so on purpose, declare dtypes without float64)")
        return ""

    # -- gradients --------------------------------------------------------------------------------
    def upstream(self, p: KernelProblem | None = None) -> torch.Tensor:
        """The output's gradient for backward, (B, Lq, Hq, Dv) float64, from the seed."""
        p = p or self.problem
        return torch.randn(p.B, p.Lq, p.Hq, p.dv, generator=generator(p.seed, 3), dtype=torch.float64)

    def gradients(self, inputs: KernelInputs, upstream: torch.Tensor, problem: KernelProblem | None = None) -> dict:
        """``{"dq", "dk", "dv"}``: the kernel's gradients of ``sum(out * upstream)``."""
        p = problem or self.problem
        leaves = inputs.replace(**{n: getattr(inputs, n).detach().clone().requires_grad_(True) for n in "qkv"})
        out, _ = self.call(leaves, p)
        self.guard(lambda: (out * upstream.to(out.device, out.dtype)).sum().backward(), "backward")
        grads = {f"d{n}": getattr(leaves, n).grad for n in "qkv"}
        for name, g in grads.items():
            if g is None:
                raise Mismatch(f"{name} = None, but should be a tensor (backward claimed: the output depends on "
                               f"{name[1:]})")
        return grads

    def reference_gradients(self, inputs: KernelInputs, upstream, problem=None, dtype=torch.float64) -> dict:
        p = problem or self.problem
        out, _, leaves = reference.of_problem(p, inputs, dtype=dtype, device="cpu", requires_grad=True)
        (out * upstream.to(dtype)).sum().backward()
        return {f"d{n}": t.grad for n, t in zip("qkv", leaves)}

    def assert_gradients_match(self, inputs: KernelInputs, what: str = "grad"):
        """dq, dk, dv of ``sum(out * upstream)`` equal the reference's (GQA: each kv head's summed over its group)."""
        p = self.problem
        upstream = self.upstream(p)
        got = self.gradients(inputs, upstream)
        ref = self.reference_gradients(inputs, upstream)
        plain = self.reference_gradients(inputs, upstream, dtype=tolerances.baseline_dtype(self.tol_dtype)[0])
        largest = max(tolerances.magnitude(t) for t in ref.values()) * max(
            1.0, *(tolerances.magnitude(t.double()) for t in (inputs.q, inputs.k, inputs.v)))
        terms = max(p.Lq, p.Lk) * (p.Hq // p.Hkv) + max(p.D, p.dv)
        for name, expected in ref.items():
            tol = tolerances.bound("gradient", self.tol_dtype, expected, [plain[name]], scale=largest, terms=terms)
            self.assert_close(got[name], expected, self.adapter.capabilities.tolerance_factor * tol, f"{what} {name}")
