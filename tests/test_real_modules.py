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


def test_float32_softmax_in_a_float64_call_is_named():
    result = _certify(shapes.FLOAT32_SOFTMAX_UNDECLARED, laws=["output_matches_reference"])[0]
    assert result.status == "fail" and "float32-level error in a float64 call" in result.message
    declared = _certify(shapes.FLOAT32_SOFTMAX, laws=["output_matches_reference"])[0]
    assert declared.status == "pass"


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
