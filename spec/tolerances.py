"""The one tolerance table, and the rule that turns it into a bound.

The rule (FlashAttention's: its tests hold a kernel's error to a multiple of the error of a plain
PyTorch computation in the same dtype, plus a rounding floor): an implementation
computing in dtype X may differ from the float64 reference by at most

    k * baseline_X + floor * noise_X

* ``baseline_X``: the largest error, against the float64 reference, of a plain
  computation of the same math in X — the reference itself run in X, once as
  written and once with the operations reordered (scale on the keys instead of
  the queries). It is what "computing this in X" costs, for these very inputs.
  For X = float64 the reference *is* the plain computation, so its rounding error
  is estimated from the float32 computation, scaled by eps(float64) / eps(float32):
  rounding errors of the same operations scale with the unit roundoff.
* ``noise_X``: one unit roundoff of X at the result's magnitude,
  ``eps_X * (max |ref| + 0.3)`` (FlashAttention measures the same quantity as
  ``|((ref + 0.3) - 0.3) - ref|``). It keeps the bound above zero when the
  baseline happens to be exact (a single key; a gradient that is exactly zero).
  For gradients the magnitude is that of the largest gradient of the call.
  The floor counts units of that roundoff from two independent sources, which add
  (first-order error analysis):
  sqrt(n) for the longest sum of n terms behind the result (Higham's probabilistic
  rounding bound: a correct kernel may sum in any order), plus Λ, the largest float64
  logit, since rounding a logit of size Λ perturbs its softmax weight by a relative
  eps·Λ (a softmax computed as exp(x - logsumexp(x)) shows exactly this error, which
  a max-subtracted baseline does not).

Metamorphic laws compare an implementation with itself under a transformation;
each side may be off by the bound, so their difference may be off by twice it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SuiteError


@dataclass(frozen=True)
class Rule:
    k: float      # multiple of the same-dtype baseline error
    floor: float  # multiple of the rounding noise at the result's magnitude


RULES = {
    # FlashAttention uses k=2 on tensors of 10^5 elements; ours hold a few dozen, so a
    # maximum over them is a noisier estimate of the baseline: k=4 leaves room for that
    # (a correct kernel's error reached 3.8x the baseline in 150 draws).
    # floor=2 units per source (sqrt(n) + logit): tools/tolerance_margin.py measures the
    # worst error of 22 correct implementations in 3 dtypes at a fraction of the bound.
    "output": Rule(k=4.0, floor=2.0),
    # Weights are softmax outputs in [0, 1]: same rule as outputs.
    "weights": Rule(k=4.0, floor=2.0),
    # Backward passes accumulate more roundings (FlashAttention: 3x the forward's k).
    "gradient": Rule(k=8.0, floor=16.0),
    # A kernel's log-normaliser (LSE), float32 by contract whatever the inputs: its baseline is the LSE in
    # float32 of logits computed in the kernel's dtype, and its noise float32's (attnspec.kernel.case).
    "lse": Rule(k=4.0, floor=2.0),
}

# Tolerance is measured against a plain computation, so TF32 matmuls would make a
# correct float32 kernel look 1000x worse than its baseline: checks run with TF32 off.
TF32_ALLOWED = False


def lower_precision(dtype: torch.dtype, declared: torch.dtype | None) -> torch.dtype:
    """``declared`` where it is coarser than ``dtype`` (a module computing internally in it), else ``dtype``."""
    if declared is not None and torch.finfo(declared).eps > torch.finfo(dtype).eps:
        return declared
    return dtype


def baseline_dtype(dtype: torch.dtype) -> tuple:
    """The dtype to run the plain computation in, and the factor that scales its error to ``dtype``."""
    if dtype == torch.float64:
        return torch.float32, torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
    return dtype, 1.0


def magnitude(ref64: torch.Tensor) -> float:
    """Largest finite |value| of a result (0 for an empty one)."""
    finite = ref64[torch.isfinite(ref64)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def noise(scale: float, dtype: torch.dtype) -> float:
    """One unit roundoff of ``dtype`` at magnitude ``scale`` (+0.3, as FlashAttention's floor)."""
    return torch.finfo(dtype).eps * (scale + 0.3)


def max_error(actual: torch.Tensor, ref64: torch.Tensor) -> float:
    """Largest |actual - ref64| over the positions where both are finite (never NaN)."""
    if actual is None or actual.numel() == 0:
        return 0.0
    a = actual.detach().to("cpu", torch.float64)
    ref64 = ref64.detach().to("cpu", torch.float64)  # a law may build its exact values where the module ran
    ok = torch.isfinite(ref64) & torch.isfinite(a)
    diff = (a - ref64).abs()[ok]
    return float(diff.max()) if diff.numel() else 0.0


def mean_error(actual: torch.Tensor, ref64: torch.Tensor) -> float:
    """Mean |actual - ref64| over the positions where both are finite (FlashAttention 3 bounds it beside the max)."""
    if actual is None or actual.numel() == 0:
        return 0.0
    a = actual.detach().to("cpu", torch.float64)
    ref64 = ref64.detach().to("cpu", torch.float64)
    ok = torch.isfinite(ref64) & torch.isfinite(a)
    return float((a - ref64).abs()[ok].mean()) if bool(ok.any()) else 0.0


def reduction_length(problem, quantity: str) -> int:
    """Terms in the longest sum behind ``quantity`` for ``problem`` (see the module docstring)."""
    c = problem.config
    width = max(c.embed_dim, c.k_in, c.v_in, c.q_in)
    keys = problem.S + c.extra_keys
    if quantity == "gradient":  # weight gradients sum over every position of every batch item
        return problem.B * max(problem.L, keys) + keys + width
    return keys + width


def bound(quantity: str, dtype: torch.dtype, ref64: torch.Tensor, baselines, scale: float | None = None,
          terms: int = 1, logits: float = 0.0) -> float:
    """The largest error allowed for ``quantity`` computed in ``dtype`` (see module docstring).

    ``baselines`` are plain computations of the same math in ``baseline_dtype(dtype)``
    (tensors, any may be None); their error is scaled to ``dtype``. ``scale`` is the
    magnitude for the noise floor (default: that of ``ref64``); ``terms`` the reduction length;
    ``logits`` the largest |logit|.
    """
    if quantity not in RULES:
        raise ValueError(f"quantity={quantity!r}, but should be one of {sorted(RULES)}")
    rule = RULES[quantity]
    _, factor = baseline_dtype(dtype)
    base = factor * max((max_error(b, ref64) for b in baselines if b is not None), default=0.0)
    floor = rule.floor * (terms ** 0.5 + logits) * noise(magnitude(ref64) if scale is None else scale, dtype)
    return rule.k * base + floor


# -- which comparisons count ------------------------------------------------------------
# A comparison can only fail if its tolerance is clearly smaller than the spread of the
# quantity compared: when the allowed error reaches the range the values span, any
# answer of the right size passes (bfloat16 at large logits, where rounding one logit
# moves its softmax weight by a relative eps * logit, is the common case). The rule: a
# comparison is *informative* when tol <= INFORMATIVE_FRACTION * spread, so that a value
# at one end of the range cannot pass for one at the other. The spread is max - min of
# the expected finite values, or max |value| when they are all equal (a single value, row
# sums that should all be 1); a law may name a wider quantity whose spread applies (a row
# that should be exactly out_proj.bias is judged against the spread of the whole output).
# An example counts as compared when at least one of its comparisons was informative; a
# law whose examples were mostly not compared (fewer than MIN_COMPARED of them) is
# inconclusive, never a pass. The strategies are built so that far more are: on every
# bundled implementation each passing law compares at least 90% of its examples
# (tests/test_verdicts.py); the margin down to 50% is for modules whose declared limits
# leave fewer kinds of problem to draw. A bit-identical comparison, a requirement of finiteness, and a required
# error are informative whenever they look at anything.
#
# Where a dtype cannot make a law's comparisons informative at any scale, the law does not
# run in that dtype (it registers ``dtypes=HIGH_PRECISION``; reported as not claimed, with
# the reason): in bfloat16 and float16, gradient bounds exceed the gradients' spread, and the
# mean of per-head weights is compared at 2x a bound of about a quarter of the weights' range.
INFORMATIVE_FRACTION = 0.5
MIN_COMPARED = 0.5
LOW_PRECISION = (torch.bfloat16, torch.float16)
HIGH_PRECISION = (torch.float64, torch.float32)

# Input scales drawn per dtype (queries and keys are multiplied by them, so logits grow with
# the square). In bfloat16 and float16 a logit of size 8 already makes the bound reach the
# range of the output (eps * logit ~ 1/16 per weight), so low precision draws scale 1 only.
SCALES = {torch.float64: (1.0, 1.0, 1.0, 8.0), torch.float32: (1.0, 1.0, 1.0, 8.0),
          torch.bfloat16: (1.0,), torch.float16: (1.0,)}
# large_inputs_stay_finite: logits in the hundreds in float64 and float32 (a softmax that
# does not subtract the row max overflows past 88); in low precision, the largest scale at
# which the value comparison still informs (finiteness is required at any scale).
LARGE_SCALE = {torch.float64: 30.0, torch.float32: 30.0, torch.bfloat16: 2.0, torch.float16: 2.0}


def spread(expected: torch.Tensor) -> float:
    """The range a result spans: max - min of its finite values, or max |value| if they are all equal."""
    finite = expected.detach()[torch.isfinite(expected.detach())].double()
    if finite.numel() == 0:
        return 0.0
    span = float(finite.max() - finite.min())
    return span if span > 0 else float(finite.abs().max())


def informative(tol: float, expected: torch.Tensor) -> bool:
    """Whether a comparison with allowed error ``tol`` against ``expected`` could fail (see above)."""
    return tol <= INFORMATIVE_FRACTION * spread(expected)


def check_tolerance(tol: float, what: str) -> float:
    """``tol`` itself, if it is a finite non-negative number; a :class:`~attnspec.errors.SuiteError` otherwise."""
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise SuiteError(f"attnspec derived tolerance {tol!r} for {what}, but a tolerance must be finite and >= 0: "
                         "this is a bug in attnspec, not in the implementation")
    return float(tol)
