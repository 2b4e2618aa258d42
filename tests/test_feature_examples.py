"""docs/features.md's worked adapters work: a Gemma-2-style and a gpt-oss-style attention certify, each with the
laws of its features, and each twin fails the law that names its bug."""
import pytest

from attnspec import Rope, RopeScaling, load_impl
from attnspec.impls.modern_attention import ModernAttention
from attnspec.runner import certify

EXAMPLES = [
    ("tests.examples.gemma2_attention", {"softmax_scale_is_applied", "softcap_matches_reference",
                                         "softcap_applies_before_masking", "keys_outside_window_do_not_affect_output",
                                         "rope_depends_only_on_relative_position"}, "softcap_matches_reference"),
    ("tests.examples.gpt_oss_attention", {"sinks_take_attention_without_value", "grouped_kv_equals_repeated_heads",
                                          "keys_outside_window_do_not_affect_output"},
     "sinks_take_attention_without_value"),
]


@pytest.mark.parametrize("module, laws, _", EXAMPLES, ids=[m.split(".")[-1] for m, _, _ in EXAMPLES])
def test_feature_example_certifies_with_the_laws_of_its_features(module, laws, _):
    results = certify(load_impl(f"{module}:ADAPTER"), max_examples=10)
    bad = [(r.law, r.message) for r in results if r.status in ("fail", "error", "inconclusive")]
    assert not bad, bad
    assert laws <= {r.law for r in results if r.status == "pass"}


@pytest.mark.parametrize("module, _, law", EXAMPLES, ids=[m.split(".")[-1] for m, _, _ in EXAMPLES])
def test_feature_example_twin_fails_the_law_naming_its_bug(module, _, law):
    result, = certify(load_impl(f"{module}:BROKEN"), laws=[law])
    assert result.status == "fail", result.message
    assert f"breaks {law}" in result.message


@pytest.mark.parametrize("kwargs, named", [
    (dict(softmax_scale=0.0), "softmax_scale=0.0"), (dict(softcap=-1.0), "softcap=-1.0"),
    (dict(alibi=1), "alibi=1"), (dict(sinks="yes"), "sinks='yes'"), (dict(qk_norm="head"), "qk_norm='head'"),
    (dict(rope=Rope(scaling=RopeScaling("dynamic", 2.0))), "4 under dynamic scaling"),
])
def test_bundled_module_rejects_bad_feature_arguments_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        ModernAttention(4, 2, **kwargs)  # head_dim 2: dynamic NTK needs 4 rotated features
