"""Self-tests of the suite's own helpers: strategies, inputs, tolerances, messages, loading, report."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from attnspec import Adapter, Capabilities, Config, DropIn, ImplLoadError, Problem, load_impl
from attnspec import tolerances
from attnspec.case import Case
from attnspec.errors import Mismatch
from attnspec.inputs import make_inputs
from attnspec.adapter import NO_CUDA
from attnspec.report import Matrix, result_of, row_label
from attnspec.requirements import Scope
from attnspec.strategies import problems, problems_for
from attnspec.transforms import masked
from attnspec.verdict import Verdict
from attnspec.weights import permute_heads
from tests.zoo.base import ZooMHA

TORCH = DropIn(nn.MultiheadAttention, name="torch")


# -- strategies ------------------------------------------------------------------------------
@pytest.mark.parametrize("caps, constraints", [
    (Capabilities(cross_attention=False), dict(self_attention=False)),
    (Capabilities(key_padding_mask_kinds=(), attn_mask_kinds=()), dict(has_mask=True)),
    (Capabilities(attn_mask_kinds=()), dict(causal_attn_mask=True)),
    (Capabilities(layouts=("unbatched",)), dict(layout=("batch_first", "seq_first"))),
    (Capabilities(), dict(min_heads=9)),
    (Capabilities(max_heads=1), dict(min_heads=2)),
    (Capabilities(dtypes=(torch.float16,)), dict()),
], ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_impossible_draws_are_rejected(caps, constraints):
    with pytest.raises(InvalidArgument, match="scope has no value left"):
        _draw(problems_for(caps, **constraints))


@pytest.mark.parametrize("bad, message", [
    (dict(scope="everything"), "scope='everything'"),
    (dict(dtype=torch.int32), "dtype=torch.int32"),
])
def test_strategies_name_a_bad_argument(bad, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        _draw(problems(bad["scope"]) if "scope" in bad else problems_for(Capabilities(), **bad))


def test_a_constraint_on_no_dimension_names_it():
    with pytest.raises(ValueError, match="no_such_dimension="):
        Scope.of(Capabilities()).narrowed(no_such_dimension=True)


def _draw(strategy):
    """Draw one example inside a Hypothesis test (where strategies validate their arguments)."""
    drawn = []

    @settings(max_examples=1, database=None)
    @given(strategy)
    def once(value):
        drawn.append(value)

    once()
    return drawn[0]


@settings(max_examples=200)
@given(problems_for(Capabilities()))
def test_draws_stay_within_capabilities(p):
    assert Scope.of(Capabilities()).excludes(p) == []


@settings(max_examples=200)
@given(st.data())
def test_draws_respect_narrow_capabilities(data):
    caps = Capabilities(cross_attention=False, layouts=("batch_first",), key_padding_mask_kinds=(), attn_mask_kinds=(),
                        returns_weights=False, bias_values=(True,), bias_kv=False, zero_attn=False,
                        kdim_vdim=False, dtypes=(torch.float64,), grouping="multi-query", max_heads=6)
    p = data.draw(problems_for(caps))
    assert Scope.of(caps).excludes(p) == []


def test_a_problem_outside_the_scope_is_named():
    caps = Capabilities(cross_attention=False, returns_weights=False, grouping="multi-query")
    p = Problem(Config(4, 2), batch=1, L=2, S=3)
    assert Scope.of(caps).excludes(p) == ["cross-attention", "need_weights=True", "num_kv_heads=None"]


@settings(max_examples=200)
@given(problems_for(Capabilities()))
def test_every_row_keeps_a_visible_key(p):
    mask = masked(make_inputs(p), p)
    assert not mask.all(dim=-1).any(), p.short()


@settings(max_examples=100)
@given(problems_for(Capabilities(), fully_masked=("batch", "row", "head")))
def test_fully_masked_draws_mask_a_row(p):
    assert masked(make_inputs(p), p).all(dim=-1).any(), p.short()


def test_inputs_replay_from_the_seed():
    p = Problem(Config(4, 2, kdim=3), batch=2, L=3, S=4, key_padding_mask_kind="float", attn_mask_kind="bool",
                mask_3d=True, seed=11)
    a, b = make_inputs(p), make_inputs(p)
    for name, t in a.tensors().items():
        assert torch.equal(t, getattr(b, name)), name


def test_shapes_follow_the_shrunk_structure():
    p = _draw(problems_for(Capabilities()))
    assert 1 <= p.config.num_heads <= 8 and p.config.embed_dim % p.config.num_heads == 0


# -- tolerances ------------------------------------------------------------------------------
def test_bound_grows_with_the_baseline_error():
    ref = torch.ones(4, dtype=torch.float64)
    small = tolerances.bound("output", torch.float32, ref, [ref + 1e-7])
    large = tolerances.bound("output", torch.float32, ref, [ref + 1e-5])
    assert 0 < small < large


def test_bound_is_positive_when_the_baseline_is_exact():
    ref = torch.zeros(3, dtype=torch.float64)
    assert tolerances.bound("gradient", torch.float64, ref, [ref]) > 0


def test_float64_baseline_is_measured_in_float32_and_scaled():
    dtype, factor = tolerances.baseline_dtype(torch.float64)
    assert dtype == torch.float32 and factor == pytest.approx(2.0 ** -29)
    assert tolerances.baseline_dtype(torch.bfloat16) == (torch.bfloat16, 1.0)


def test_unknown_quantity_is_named():
    with pytest.raises(ValueError, match="quantity='logits'"):
        tolerances.bound("logits", torch.float32, torch.ones(1), [])


# -- messages ----------------------------------------------------------------------------------
def test_mismatch_message_names_element_values_and_tolerance():
    case = Case(TORCH, Problem(Config(2, 1), batch=1, L=1, S=1))
    with pytest.raises(Mismatch) as info:
        case.assert_close(torch.tensor([[1.0, 2.5]]), torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.1,
                          "output")
    text = str(info.value)
    assert "output[0, 1] = 2.5, but should be 2" in text and "allowed 0.1" in text and "1/2 elements" in text


def test_nan_is_reported_as_not_finite():
    case = Case(TORCH, Problem(Config(2, 1), batch=1, L=1, S=1))
    with pytest.raises(Mismatch, match="not finite"):
        case.assert_close(torch.tensor([float("nan")]), torch.tensor([0.5], dtype=torch.float64), 1.0, "output")


def test_failure_carries_problem_and_repro():
    from attnspec.checks import LAWS
    from attnspec.errors import ConformanceFailure

    class Broken(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            out, w = super().forward(*args, **kwargs)
            return out * 1.01, w

    with pytest.raises(ConformanceFailure) as info:
        LAWS["output_matches_reference"].check(DropIn(Broken, name="broken"),
                                               Problem(Config(4, 2), batch=2, L=3, S=3, seed=1))
    text = str(info.value)
    for part in ("broken breaks output_matches_reference (attnspec/checks/equivalence.py:", "problem: B=2, L=3, S=3",
                 "reproduce: from attnspec import Config, Problem, replay; replay('broken', 'output_matches_reference',"
                 " Problem(Config(4, 2), batch=2, L=3, S=3, seed=1))"):
        assert part in text, text


# -- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("no_colon", "expected 'package.module:Name'"),
    ("no.such.module:Thing", "cannot import module 'no.such.module'"),
    ("torch.nn:NoSuchThing", "has no attribute 'NoSuchThing'"),
    ("torch.nn.functional:softmax", "neither an nn.Module subclass"),
    ("tests.test_helpers:HalfAdapter", "does not implement get_weights"),
])
def test_bad_impl_values_are_explained(value, message):
    with pytest.raises(ImplLoadError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_impl(value)
    assert value in str(info.value)


class HalfAdapter(Adapter):
    """An adapter that forgot get_weights and set_weights."""

    name = "half"

    def build(self, config, *, dtype, device):
        return nn.MultiheadAttention(config.embed_dim, config.num_heads)


def test_a_drop_in_class_loads_with_no_adapter_code():
    adapter = load_impl("torch.nn:MultiheadAttention")
    assert isinstance(adapter, DropIn) and adapter.origin == "torch.nn:MultiheadAttention"


PROBE = """import sys
def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        print("the controller imported torch:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_bad_impl_stops_the_run_with_one_line(workers, tmp_path):
    """With pytest-xdist the workers load --impl (its controller imports no torch); the controller says why, once."""
    (tmp_path / "probe.py").write_text(PROBE)
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", workers, "--impl", "torch.nn:NoSuchThing", "-q",
                          "-p", "probe", "tests/test_conformance.py"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"})
    assert run.returncode == 4, run.stdout + run.stderr
    assert f"the controller imported torch: {workers == '0'}" in run.stdout, run.stdout
    assert run.stderr.strip() == "ERROR: --impl 'torch.nn:NoSuchThing': module 'torch.nn' has no attribute " \
                                 "'NoSuchThing'", run.stdout + run.stderr
    assert "Traceback" not in run.stdout and "ERROR collecting" not in run.stdout, run.stdout


# -- weights -----------------------------------------------------------------------------------
def test_head_permutation_of_weights_keeps_the_reference_output():
    from attnspec.reference import multi_head_attention
    p = Problem(Config(6, 3, add_bias_kv=True), batch=2, L=3, S=4, seed=5)
    case = Case(TORCH, p)
    w = case.weights_of(case.build())
    inputs = case.inputs()
    a, _ = multi_head_attention(inputs.query, inputs.key, inputs.value, w, num_heads=3)
    b, _ = multi_head_attention(inputs.query, inputs.key, inputs.value,
                                permute_heads(w, torch.tensor([2, 0, 1]), 3), num_heads=3)
    torch.testing.assert_close(a, b)


# -- report ------------------------------------------------------------------------------------
def _verdict(impl, law, family, device, status, dtype, detail="why"):
    return Verdict(impl=impl, law=law, family=family, device=device, dtype=dtype, status=status, detail=detail)


VERDICTS = [_verdict("a-rather-long-implementation-name-that-must-stay-whole", law, fam, "cpu", status, "float32")
            for law, fam, status in [("output_shapes", "shape", "pass"),
                                     ("output_matches_reference", "equivalence", "fail"),
                                     ("weights_zero_on_masked_keys", "masking", "not claimed"),
                                     ("fully_masked_rows_follow_policy", "masking", "deviation")]] + \
    [_verdict("short", "output_shapes", "shape", "cuda", "skipped", "float16", NO_CUDA),
     _verdict("short", "output_shapes", "shape", "cpu", "not claimed", "bfloat16", "not claimed: needs dtype bfloat16"),
     _verdict("kernel", "output_shapes", "shape", "cpu", "skipped", "float32", "the X kernel does not run here")]


def test_matrix_keeps_names_whole_and_counts():
    text = Matrix.of(VERDICTS).terminal()
    assert "a-rather-long-implementation-name-that-must-stay-whole f32" in text  # never cut
    assert "FAIL" in text and "cuda: skipped (CUDA is not available on this machine)" in text
    assert "nothing claimed: short bf16" in text
    assert "kernel: skipped (the X kernel does not run here)" in text
    assert "PASS* a-rather-long-implementation-name-that-must-stay-whole f32: fully_masked_rows_follow_policy" in text


def test_results_rank_failures_then_crashes_then_hangs():
    def of(*statuses):
        return result_of([_verdict("m", "law", "shape", "cpu", s, "float64") for s in statuses])

    assert of("pass", "crashed", "fail") == "FAIL"
    assert of("pass", "hung", "crashed") == "CRASHED"
    assert of("not run", "pass") == of("hung") == "HUNG"
    assert of("inconclusive", "deviation") == "INCONCL" and of("deviation", "pass") == "PASS*" and of("pass") == "PASS"


def test_a_law_that_names_a_feature_is_listed_before_general_ones():
    general = _verdict("m", "output_matches_reference", "equivalence", "cpu", "fail", "float64")
    specific = general.replace(law="grouped_kv_equals_repeated_heads", family="head-split", requires=("grouped heads",))
    assert [v.law for v in Matrix.of([general, specific]).findings] == [specific.law, general.law]


def test_row_labels_name_device_and_dtype():
    assert row_label("sdpa", "cpu", "bfloat16") == "sdpa bf16"
    assert row_label("sdpa", "cuda", "float16") == "sdpa cuda f16"
    assert row_label("sdpa", "cpu", "") == "sdpa"  # certify() without a dtype: drawn per problem


def test_json_and_markdown_carry_the_same_verdicts():
    matrix = Matrix.of(VERDICTS)
    data = json.loads(json.dumps(matrix.to_json(VERDICTS, {})))
    assert data["schema_version"] == 2
    entry = data["implementations"]["a-rather-long-implementation-name-that-must-stay-whole"]
    assert entry["result"] == "FAIL"
    assert entry["verdicts"]["cpu"]["float32"]["output_matches_reference"]["status"] == "fail"
    assert data["summary"]["pass"] == 1
    assert Verdict.from_dict(entry["verdicts"]["cpu"]["float32"]["output_shapes"] | {
        "impl": "x", "law": "output_shapes", "device": "cpu", "dtype": "float32"}).status == "pass"
    md = matrix.markdown()
    assert "| `a-rather-long-implementation-name-that-must-stay-whole f32` |" in md and "FAIL" in md
    assert "· output_matches_reference (equivalence)" in md


# -- the empty-sequence law ------------------------------------------------------------------
class _MergeWithMinusOne(ZooMHA):
    """Heads merged with reshape(N, L, -1): fine for every length but 0, where -1 is ambiguous."""

    def _merge_heads(self, heads):
        N, _, L, _ = heads.shape
        return heads.transpose(1, 2).reshape(N, L, -1)  # (N, L, E)


class _NoKeysGiveNaN(ZooMHA):
    """With no keys, softmax over nothing, then 0/0: every output row is NaN instead of out_proj.bias."""

    def forward(self, query, key, value, *args, **kwargs):
        out, w = super().forward(query, key, value, *args, **kwargs)
        empty = key.shape[1 if self.batch_first and key.dim() == 3 else 0] == 0
        return (out * float("nan") if empty else out), w


@pytest.mark.parametrize("cls, message", [(_MergeWithMinusOne, "with no queries .* cannot reshape"),
                                          (_NoKeysGiveNaN, "with no keys .* not finite")])
def test_empty_sequences_catches_crashes_and_wrong_values(cls, message):
    from attnspec.runner import run_law
    from attnspec.checks import LAWS
    result = run_law(LAWS["empty_sequences"], DropIn(cls, name=cls.__name__), max_examples=50, seed=0)
    assert result.status == "fail" and re.search(message, result.message, re.S), result.message
    clean = run_law(LAWS["empty_sequences"], DropIn(ZooMHA, name="ZooMHA"), max_examples=50, seed=0)
    assert clean.status == "pass", clean.message


@pytest.mark.parametrize("setup, expected", [
    ("", 25),                                                               # Hypothesis's default profile
    ("settings.load_profile('ci')", 25),                                    # loaded by Hypothesis where CI is set
    ("settings.register_profile('ci', max_examples=7); settings.load_profile('ci')", 7),  # the user's own ci
    ("settings.register_profile('mine', max_examples=9); settings.load_profile('mine')", 9),
])
def test_the_budget_is_the_users_profile_or_ours(setup, expected):
    """Hypothesis loads its "ci" profile by itself under CI=true: it is not a choice, so attnspec's budget holds."""
    code = f"from hypothesis import settings\n{setup}\nfrom attnspec import profiles\nprint(profiles.active().max_examples)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(run.stdout) == expected


def test_reused_strategies_tell_equal_options_of_other_types_apart():
    """The draws reuse one strategy per distinct options; (True,) == (1,), but a flag is not a head count."""
    from attnspec.strategies import _sampled
    flag, heads = _sampled([True]), _sampled([1])
    assert _sampled((True,)) is flag and heads is not flag
    from hypothesis import find
    assert type(find(heads, lambda _: True)) is int and type(find(flag, lambda _: True)) is bool
