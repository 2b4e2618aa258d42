"""Modules shaped like real ones (tests/examples/shapes.py) get the verdict their shape deserves."""
import json
import subprocess
import sys
import warnings

import pytest
import torch

from attnspec import DropIn
from attnspec.checks import LAWS
from attnspec.runner import certify, run_law
from tests.examples import shapes
from tests.zoo.base import ZooMHA

FAST = dict(max_examples=10, seed=0)


def _certify(adapter, dtype=torch.float64, laws=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return certify(adapter, dtype=dtype, laws=laws, **FAST)


def _bad(results):
    return [(r.law, r.status, r.message[:600]) for r in results if r.status in ("fail", "error", "inconclusive")]


@pytest.mark.parametrize("adapter", [shapes.PARTIAL_BIASES, shapes.OUTPUT_BIAS_ONLY, shapes.NO_OUT_PROJ_AT_ONE_HEAD,
                                     shapes.SHARED_KV, shapes.FLOAT32_SOFTMAX], ids=lambda a: a.name)
def test_correct_real_shapes_pass(adapter):
    results = _certify(adapter)
    assert not _bad(results), _bad(results)
    passed = {r.law for r in results if r.status == "pass"}
    # torch's module is loaded with each form too: absent biases as zeros, an absent Wo as the identity
    assert {"output_matches_reference", "gradients_match_reference", "head_permutation_invariance",
            "matches_torch_module"} <= passed


def test_shared_key_value_draws_cross_attention_with_one_tensor():
    from hypothesis import given, settings

    from attnspec.inputs import make_inputs
    from attnspec.requirements import decide
    from attnspec.strategies import problems

    seen = []

    @settings(max_examples=30, database=None)
    @given(problems(decide(LAWS["output_matches_reference"], shapes.SHARED_KV.capabilities).scope))
    def draws(p):
        if not p.self_attention:
            inputs = make_inputs(p)
            assert p.key_is_value and inputs.value is inputs.key
            seen.append(p.L != p.S)
    draws()
    assert any(seen), "never drew L != S"


def test_shared_key_value_bug_is_caught():
    result = _certify(shapes.SHARED_KV_BROKEN, laws=["output_matches_reference"])[0]
    assert result.status == "fail" and "key is value" in result.message


def test_missing_output_projection_must_be_declared():
    result = _certify(shapes.NO_OUT_PROJ_UNDECLARED, laws=["output_matches_reference"])[0]
    assert result.status == "fail" and "Wo = None at num_heads=1" in result.message


PRECISION_HINT = "possibly the module computes in float32"


def test_float32_softmax_in_a_float64_call_is_named():
    result = _certify(shapes.FLOAT32_SOFTMAX_UNDECLARED, laws=["output_matches_reference"])[0]
    assert result.status == "fail" and PRECISION_HINT in result.message
    declared = _certify(shapes.FLOAT32_SOFTMAX, laws=["output_matches_reference"])[0]
    assert declared.status == "pass"


class _DividesBySumPlusEpsilon(ZooMHA):
    """A float64 softmax normalised by ``sum + 1e-8``: every row off by one constant ratio."""

    def _softmax(self, logits):
        e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
        return e / (e.sum(dim=-1, keepdim=True) + 1e-8)


class _WrongScale(ZooMHA):
    """Logits scaled by 1.5 / sqrt(hd): where the softmax saturates, the output errs by float32-sized amounts."""

    def _scale(self):
        return 1.5 * self.head_dim ** -0.5


def test_sum_plus_epsilon_is_not_blamed_on_precision():
    result = _certify(DropIn(_DividesBySumPlusEpsilon, name="sum+1e-8"), laws=["output_matches_reference"])[0]
    assert result.status == "fail", result.message
    assert PRECISION_HINT not in result.message, result.message


def test_a_wrong_scale_hidden_by_a_saturated_softmax_is_not_blamed_on_precision():
    from attnspec import Config, Problem
    from attnspec.case import Case
    from attnspec.checks.equivalence import _float32_error
    from attnspec.errors import ConformanceFailure

    adapter, law = DropIn(_WrongScale, name="wrong-scale"), LAWS["output_matches_reference"]
    saturated = Problem(Config(4, 1, batch_first=True), batch=1, L=2, S=3, input_scale=8.0, seed=3, need_weights=False)
    assert _float32_error(Case(adapter, saturated, law=law), saturated)[0] <= 1  # as small as float32 rounding here
    with pytest.raises(ConformanceFailure) as failure:
        law.check(adapter, saturated)
    assert PRECISION_HINT not in str(failure.value), str(failure.value)


class _CrashesAlways(ZooMHA):
    def forward(self, *args, **kwargs):
        raise RuntimeError("CUDA kernel launch failed (simulated)")


@pytest.mark.parametrize("law", ["rejects_wrong_mask_shape", "rejects_wrong_mask_dtype", "rejects_mismatched_key_value"])
def test_a_module_crashing_on_every_call_does_not_pass_bad_input_laws(law):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_law(LAWS[law], DropIn(_CrashesAlways), **FAST)
    assert result.status == "fail" and "with valid input crashes too" in result.message, result.message


def test_a_rejection_by_attnspecs_own_helper_is_not_the_modules():
    result = _certify(shapes.HELPER_REJECTS, laws=["rejects_wrong_mask_shape"])[0]
    assert result.status == "fail" and "attnspec's own mask helper" in result.message
    converted = _certify(shapes.PARTIAL_BIASES, laws=["rejects_wrong_mask_shape", "rejects_wrong_mask_dtype"])
    assert {r.status for r in converted} == {"not claimed"}


def test_declared_edge_cases_are_not_claimed_never_passed():
    caps = shapes.BASE.replace(edge_cases=("large inputs",))  # no empty sequences, no fully masked rows
    results = _certify(shapes.SmallAdapter("small.no_empty", caps),
                       laws=["empty_sequences", "fully_masked_rows_do_not_contaminate", "large_inputs_stay_finite"])
    assert [r.status for r in results] == ["not claimed", "not claimed", "pass"]
    assert "empty sequences" in results[0].detail


def test_names_with_brackets_and_bars_stay_whole(tmp_path):
    (tmp_path / "weird_impl.py").write_text(
        "from tests.examples.shapes import SmallAdapter, BASE\n"
        "ADAPTER = SmallAdapter('weird[name]|x y', BASE)\n")
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-q", "-p",
                          "no:cacheprovider", "--impl", "weird_impl:ADAPTER", "--attnspec-devices", "cpu",
                          "--attnspec-report", str(report), "-k", "output_shapes"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{__import__('os').getcwd()}"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert list(json.loads(report.read_text())["implementations"]) == ["weird[name]|x y"]


class _TiledSoftmax(ZooMHA):
    """An online softmax over tiles of two keys that gives NaN for a tile whose keys are all masked
    (``exp(-inf - -inf)``): at any input scale, so not an overflow."""

    def _softmax(self, logits):
        m = torch.full(logits.shape[:-1] + (1,), float("-inf"), dtype=logits.dtype)
        total = torch.zeros_like(m)
        for start in range(0, logits.shape[-1], 2):
            tile = logits[..., start:start + 2]
            new = torch.maximum(m, tile.amax(dim=-1, keepdim=True))
            total = total * (m - new).exp() + (tile - new).exp().sum(dim=-1, keepdim=True)
            m = new
        return (logits - m).exp() / total


def test_a_nan_at_every_scale_is_not_called_an_overflow():
    from attnspec import Config, Problem
    from attnspec.errors import ConformanceFailure

    law, adapter = LAWS["large_inputs_stay_finite"], DropIn(_TiledSoftmax, name="tiled")
    for seed in range(50):  # the first problem whose mask hides both keys of the first tile of some row
        p = Problem(Config(2, 1, batch_first=True), batch=2, L=2, S=4, key_padding_mask_kind="bool",
                    input_scale=30.0, need_weights=False, seed=seed)
        try:
            law.check(adapter, p)
        except ConformanceFailure as failure:
            assert "not an overflow" in str(failure) and "with unit inputs" in str(failure), str(failure)
            return
    pytest.fail("no problem hid a whole tile")


class _DropoutWorksButSlightlyOff(ZooMHA):
    """Dropout works; every output is 1e-8 off, in eval too."""

    def _attend(self, attn, v):
        return attn @ v + 1e-8


def test_a_law_that_cannot_judge_is_inconclusive_not_failed():
    result = _certify(DropIn(_DropoutWorksButSlightlyOff, name="slightly-off"), laws=["dropout_active_in_training"])[0]
    assert result.status == "inconclusive", result.message
    assert "could not judge it: on such problems the module already breaks output_matches_reference" in result.detail
