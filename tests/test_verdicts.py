"""Self-tests for sound verdicts: each hole a wrong module could pass through is closed.

For every hole there is a small broken module that the law used to pass and must now
reject; the correct drop-in (``ZooMHA``) passes the same laws.
"""
import warnings

import pytest
import torch
from hypothesis import given, settings

from attnspec import Capabilities, Config, Deviation, DropIn, Problem, load_impl, tolerances
from attnspec.case import Case
from attnspec.checks import LAWS, Law
from attnspec.errors import Mismatch, SuiteError
from attnspec.inputs import make_inputs
from attnspec.runner import run_law
from attnspec.strategies import problems_for
from attnspec.transforms import masked
from tests.zoo.base import ZooMHA
from tests.zoo.mutants import Bf16LongRowsOverOne, Bf16SaturatingLogits, InfSignFlipsUnderNoGrad, NanOnWeightsPath

TINY = Problem(Config(2, 1), batch=1, L=1, S=1)


def _run(cls, law, *, dtype=torch.float64, caps=None, examples=25, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = DropIn(cls, name=cls.__name__, capabilities=caps)
        return run_law(LAWS[law], adapter, dtype=dtype, max_examples=examples, seed=seed)


# -- comparisons: non-finite values and tolerances ------------------------------------------
@pytest.mark.parametrize("actual, expected", [
    ([float("-inf")], [float("inf")]),  # an infinity of the other sign
    ([1.0], [float("nan")]),  # a NaN in the expected value used to excuse anything
    ([float("nan")], [1.0]),
    ([float("inf")], [float("nan")]),
])
def test_non_finite_values_match_only_themselves(actual, expected):
    with pytest.raises(Mismatch, match="NaN matches only NaN|not finite where"):
        Case(None, TINY).assert_close(torch.tensor(actual), torch.tensor(expected, dtype=torch.float64), 1.0, "x")


def test_equal_non_finite_values_pass():
    nonfinite = torch.tensor([float("nan"), float("inf"), float("-inf"), 2.0], dtype=torch.float64)
    Case(None, TINY).assert_close(nonfinite.clone(), nonfinite, 1e-9, "x")


@pytest.mark.parametrize("tol", [float("nan"), -1.0, float("inf")])
def test_a_tolerance_that_cannot_decide_is_a_suite_error(tol):
    with pytest.raises(SuiteError, match=r"tolerance .* for output_shapes: x"):
        Case(None, TINY, law=LAWS["output_shapes"]).assert_close(torch.ones(2), torch.ones(2, dtype=torch.float64), tol, "x")


def _law_with_a_bug(case):
    """A law whose own code raises (as weights_form_a_simplex did on CUDA: a CPU tensor beside a CUDA one)."""
    case.run()
    torch.ones(2) + torch.ones(3)


def test_an_exception_in_the_laws_own_code_is_an_error_that_says_where_and_on_what():
    buggy = Law("law_with_a_bug", "numerics", _law_with_a_bug)
    result = run_law(buggy, DropIn(ZooMHA, name="zoo"), dtype=torch.float64, max_examples=5, seed=0)
    assert result.status == "error", result
    assert result.message.startswith("zoo could not be judged on law_with_a_bug"), result.message
    assert "\n  attnspec could not decide this law: RuntimeError: The size of tensor a (2) must match" in result.message
    assert f"raised at {__file__}:" in result.message and "in _law_with_a_bug: torch.ones(2) +" in result.message
    assert "\n  problem: B=" in result.message and ", on cpu\n  reproduce: " in result.message


def test_informative_rule():
    values = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert tolerances.informative(0.5, values) and not tolerances.informative(0.6, values)
    assert tolerances.informative(0.1, torch.ones(3, dtype=torch.float64))  # all equal: judged against |1|
    assert not tolerances.informative(1e-9, torch.zeros(3, dtype=torch.float64))  # nothing to judge against
    case = Case(None, TINY)
    case.assert_close(torch.ones(2), torch.ones(2, dtype=torch.float64), 0.9, "x")
    assert not case.compared
    case.assert_close(torch.ones(2), torch.ones(2, dtype=torch.float64), 0.1, "x")
    assert case.compared


def test_repeated_labels_are_targeted_once_per_example():
    """A law may compare under one label several times: Hypothesis sees the worst, and no error."""
    case = Case(None, TINY)
    for err in (0.1, 0.3, 0.2):
        case.assert_close(torch.tensor([1.0 + err]), torch.tensor([1.0], dtype=torch.float64), 1.0, "x")
    assert case.targets == {"x": pytest.approx(0.3)}


# -- broken modules that the laws used to pass (the zoo's "verdicts" mutants) --------------------
@pytest.mark.parametrize("cls, law, dtype", [
    (NanOnWeightsPath, "need_weights_does_not_change_output", torch.float64),
    (InfSignFlipsUnderNoGrad, "no_grad_matches_grad", torch.float64),
    (Bf16SaturatingLogits, "large_inputs_stay_finite", torch.bfloat16),
    (Bf16LongRowsOverOne, "weights_form_a_simplex", torch.bfloat16),
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_hole_is_closed(cls, law, dtype):
    assert _run(ZooMHA, law, dtype=dtype).status == "pass"
    result = _run(cls, law, dtype=dtype)
    assert result.status == "fail", result.message


def test_dropout_law_names_the_eval_bug_and_cannot_judge():
    """A bug already seen in eval is named, and leaves the dropout law inconclusive, not failed."""
    class ScaleBugInEval(ZooMHA):
        def _scale(self):
            return 1.0 if not self.training else super()._scale()

    result = _run(ScaleBugInEval, "dropout_active_in_training")
    assert result.status == "inconclusive" and "already breaks output_matches_reference" in result.message


# -- every example compares something ---------------------------------------------------------
@pytest.mark.parametrize("law", ["masked_keys_do_not_affect_output", "masked_keys_get_zero_gradient",
                                 "weights_zero_on_masked_keys", "causal_mask_hides_the_future",
                                 "dropout_active_in_training", "fully_masked_rows_follow_policy"])
def test_precondition_laws_compare_every_example(law):
    """These laws used to return early on a quarter to a half of their problems."""
    result = _run(ZooMHA, law)
    assert result.status == "pass" and result.compared == result.examples > 0, result


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bundled_sdpa_compares_nine_in_ten_examples(dtype):
    sdpa = load_impl("attnspec.impls.sdpa:SDPA")
    for law in LAWS.values():
        result = run_law(law, sdpa, dtype=dtype, seed=0)
        if result.status == "pass":
            assert result.compared >= 0.9 * result.examples, (law.name, result.compared, result.examples)
        else:
            assert result.status == "not claimed", (law.name, result.status, result.message)


@settings(max_examples=100, deadline=None)
@given(problems_for(Capabilities(), has_mask=True, min_length=2))
def test_every_batch_item_has_a_masked_key(p):
    inputs = make_inputs(p)
    every_head = masked(inputs, p).all(1)  # (B, L, S)
    if p.self_attention:
        every_head &= ~torch.eye(p.L, p.S, dtype=torch.bool)
    assert every_head.flatten(1).any(1).all(), p.short()
    if p.key_padding_mask_kind:  # a padded key in every item, masked for every query
        assert masked(inputs.replace(attn_mask=None), p).all(1).all(1).any(1).all(), p.short()


def test_low_precision_draws_no_scale_where_the_bound_reaches_the_range():
    @settings(max_examples=50, database=None)
    @given(problems_for(Capabilities(), dtype=torch.bfloat16))
    def draws(p):
        assert p.input_scale in tolerances.SCALES[torch.bfloat16]
    draws()


# -- scoped deviations ---------------------------------------------------------------------
# the output is NaN with need_weights=True wherever a key_padding_mask is given, else correct
class _NanWithPadding(ZooMHA):
    def forward(self, *args, need_weights=True, key_padding_mask=None, **kwargs):
        out, w = super().forward(*args, need_weights=need_weights, key_padding_mask=key_padding_mask, **kwargs)
        return (out * float("nan") if need_weights and key_padding_mask is not None else out), w


# the same, and also wrong by 1 without any mask: an unrelated regression
class _NanWithPaddingAndOffByOne(_NanWithPadding):
    def forward(self, *args, key_padding_mask=None, attn_mask=None, **kwargs):
        out, w = super().forward(*args, key_padding_mask=key_padding_mask, attn_mask=attn_mask, **kwargs)
        return (out + 1 if key_padding_mask is None and attn_mask is None else out), w


NAN_WITH_PADDING = Deviation(law="output_matches_reference",
                             when={"need_weights": True, "key_padding_mask_kind": True},
                             match="= nan", reason="NaN when padded (a known bug)")


def test_a_deviation_excuses_only_its_scope():
    caps = Capabilities(deviations=[NAN_WITH_PADDING])
    inside = _run(_NanWithPadding, "output_matches_reference", caps=caps)
    assert inside.status == "deviation" and inside.deviations[0]["observed"] > 0, inside
    outside = _run(_NanWithPaddingAndOffByOne, "output_matches_reference", caps=caps)
    assert outside.status == "fail" and "= nan" not in outside.first_detail(), outside.message
    unobserved = _run(ZooMHA, "output_matches_reference", caps=caps)
    assert unobserved.status == "pass" and unobserved.deviations[0]["observed"] == 0


def test_a_deviation_must_match_its_pattern():
    other = Deviation(law="output_matches_reference", when={"key_padding_mask_kind": True}, match="= inf",
                      reason="declared for an infinity, not a NaN")
    result = _run(_NanWithPadding, "output_matches_reference", caps=Capabilities(deviations=[other]))
    assert result.status == "fail"


@pytest.mark.parametrize("entry, message", [
    (dict(law="x", reason="r", when={"no_such_field": 1}), "not a problem field"),
    (dict(law="x", reason="", when={}), "should say why"),
    (dict(law="x", reason="r", match="("), "not a regular expression"),
    (dict(law="x", reason="r", extra=1), "unknown: extra"),
])
def test_bad_deviations_are_rejected_with_the_field(entry, message):
    with pytest.raises(ValueError, match=message):
        Capabilities(deviations=[entry])


def test_deviations_keyed_by_law_alone_are_rejected():
    with pytest.raises(ValueError, match="scoped"):
        Capabilities(deviations={"output_matches_reference": "anything"})


def test_deviation_scope_values():
    p = Problem(Config(4, 2), batch=2, L=3, S=3, dtype=torch.bfloat16, key_padding_mask_kind="float",
                need_weights=False)
    covers = lambda **when: Deviation(law="x", reason="r", when=when).covers(p, "cpu", "")  # noqa: E731
    assert covers(dtype="bfloat16", key_padding_mask_kind=True, attn_mask_kind=False, num_heads=[1, 2], device="cpu")
    assert covers(key_padding_mask_kind="float", attn_mask_kind="none", layout="seq_first")
    assert not covers(need_weights=True) and not covers(key_padding_mask_kind="bool") and not covers(dtype="float32")


def test_an_earlier_releases_scope_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="now 'key_padding_mask_kind'"):
        old = Deviation(law="x", reason="r", when={"key_padding_mask": "float"})
    assert old.when == {"key_padding_mask_kind": "float"}


def test_deviations_file_scopes_failures_and_reports_stale_entries(tmp_path):
    import json
    import os
    import subprocess
    import sys
    (tmp_path / "nan_pad.py").write_text(
        "from tests.test_verdicts import _NanWithPadding as NanWithPadding  # noqa: F401\n")
    (tmp_path / "deviations.toml").write_text(
        '[["nan_pad:NanWithPadding"]]\n'
        'law = "output_matches_reference"\n'
        'when = { need_weights = true, key_padding_mask_kind = true }\n'
        'match = "= nan"\n'
        'reason = "NaN when padded (a known bug)"\n\n'
        '[["no.such:Impl"]]\n'
        'law = "output_matches_reference"\n'
        'reason = "a stale entry"\n')
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-p", "no:cacheprovider",
                          "--impl", "nan_pad:NanWithPadding", "--attnspec-deviations", "deviations.toml",
                          "--hypothesis-profile=attnspec-ci", "--attnspec-devices", "cpu", "--attnspec-report", str(report),
                          "-k", "output_matches_reference and float64"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "entry 'no.such:Impl' names no implementation of this run" in run.stdout
    record = json.loads(report.read_text())["implementations"]["nan_pad:NanWithPadding"]["verdicts"]["cpu"]["float64"]
    law = record["output_matches_reference"]
    assert law["status"] == "deviation" and law["deviations"][0]["observed"] > 0, law


def test_failing_laws_that_name_a_feature_are_listed_first():
    """Falcon's ALiBi added twice fails alibi_matches_reference and laws that merely require more (dropout,
    per-head weights): the one naming the feature leads."""
    from attnspec.report import Matrix
    from attnspec.verdict import Verdict

    common = dict(impl="m", family="equivalence", device="cpu", dtype="float64", status="fail")
    general = Verdict(law="dropout_in_training_masks_weights", requires=("dropout", "per-head weights", "x"), **common)
    named = Verdict(law="alibi_matches_reference", requires=("ALiBi",), features=("ALiBi",), **common)
    assert [v.law for v in Matrix.of([general, named]).findings] == ["alibi_matches_reference",
                                                                    "dropout_in_training_masks_weights"]
