"""The attention layers of 2024-25 Hugging Face decoders (impls/thirdparty/hf_modern.py), with the evidence of
docs/thirdparty.md: each adapter certifies its features in every dtype; each one-bug twin (an adapter that
forgets the feature) is rejected by the law that names it; and the two behaviours of transformers 5.23.0 the
suite found stay found (FalconModel's eager ALiBi counted twice; dynamic NTK's rotary state).

None of them is in the default run (it would double its time): each is certified here on every law in
float64, with fewer examples, and on the laws of its features in every dtype.
"""
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from attnspec import Config, Problem  # noqa: E402
from attnspec.checks import LAWS  # noqa: E402
from attnspec.errors import ConformanceFailure  # noqa: E402
from attnspec.impls import thirdparty  # noqa: E402
from attnspec.impls.thirdparty import hf_modern as hm  # noqa: E402
from attnspec.impls.thirdparty.hf_transformers import LlamaRopeAdapter  # noqa: E402
from attnspec.runner import certify  # noqa: E402

FAST = dict(max_examples=10, seed=0)
DTYPES = (torch.float64, torch.float32, torch.bfloat16)

# The laws that name each adapter's features.
FEATURES = {
    hm.GEMMA2: ["softmax_scale_is_applied", "softcap_matches_reference", "softcap_applies_before_masking",
                "grouped_kv_equals_repeated_heads", "window_combines_like_masks", "keys_outside_window_do_not_affect_output"],
    hm.QWEN3: ["qk_norm_matches_reference", "grouped_kv_equals_repeated_heads", "rope_depends_only_on_relative_position"],
    hm.OLMO2: ["qk_norm_matches_reference", "grouped_kv_equals_repeated_heads", "head_permutation_invariance"],
    hm.GPT_OSS: ["sinks_take_attention_without_value", "rope_scaling_matches_reference", "window_combines_like_masks",
                 "grouped_kv_equals_repeated_heads"],
    hm.BLOOM: ["alibi_matches_reference", "gradients_match_reference"],
    hm.GPT_BIGCODE_MQA: ["query_heads_permute_within_group", "per_head_weights_count_query_heads",
                         "output_matches_reference"],
    hm.LLAMA_ROPE_LLAMA3: ["rope_scaling_matches_reference", "rope_at_position_zero_is_plain_attention"],
}
EXTENDED = [e.name for e in thirdparty.ENTRIES if not e.default_run]
BAD = ("fail", "error", "inconclusive")


def _certify(adapter, dtype=torch.float64, laws=None, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return certify(adapter, dtype=dtype, laws=laws, **{**FAST, **settings})


def _bad(results):
    return [(r.law, r.status, r.message[:800]) for r in results if r.status in BAD]


def _status(adapter, law, dtype=torch.float64, **settings):
    result = _certify(adapter, dtype, [law], **settings)[0]
    return result.status, result.message


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("adapter", list(FEATURES), ids=lambda a: a.name)
def test_each_modern_layer_certifies_its_features(adapter, dtype):
    results = _certify(adapter, dtype, FEATURES[adapter])
    assert not _bad(results), _bad(results)
    assert results[0].status == "pass", results[0].message  # the first names the feature: claimed in every dtype


# What distinguishes each variant from a layer the default run certifies on every law in every dtype.
VARIANT_FEATURES = ["rope_scaling_matches_reference", "alibi_matches_reference", "output_matches_reference"]


@pytest.mark.parametrize("name", EXTENDED)
def test_layers_outside_the_default_run_certify(name):
    """Every law in float64; in float32 and bfloat16, the laws of its features (above, or those of a variant)."""
    adapter = next(e.load() for e in thirdparty.ENTRIES if e.name == name)
    results = _certify(adapter, torch.float64, max_examples=8)
    assert not _bad(results), _bad(results)
    if adapter in FEATURES:
        return  # test_each_modern_layer_certifies_its_features
    for dtype in DTYPES[1:]:
        results = _certify(adapter, dtype, VARIANT_FEATURES)
        assert not _bad(results), (dtype, _bad(results))
        assert "pass" in {r.status for r in results}, [(r.law, r.status) for r in results]


def test_the_default_run_registers_none_of_the_modern_layers():
    registered = {a.name for a in thirdparty.entry_point()}
    assert {a.name for a in FEATURES} <= set(EXTENDED)
    assert not registered & set(EXTENDED)
    assert set(EXTENDED) <= {a.name for a in thirdparty.available()}


# ---------------------------------------------------------------------------------- one-bug twins

class _Gemma2WithoutSoftcap(hm.Gemma2Adapter):
    """A port that never passes the cap to the layer (attn_logit_softcapping=None)."""

    def hf_config(self, config):
        hf_config = super().hf_config(config)
        hf_config.attn_logit_softcapping = None
        return hf_config


class _Gemma2WithDefaultScale(hm.Gemma2Adapter):
    """A port that keeps query_pre_attn_scalar at head_dim whatever softmax_scale says."""

    def hf_config(self, config):
        hf_config = super().hf_config(config)
        hf_config.query_pre_attn_scalar = config.head_dim
        return hf_config


class _Gemma2WindowOffByOne(hm.Gemma2Adapter):
    """A port that sets sliding_window = left, forgetting that HF's window counts the query itself."""

    def hf_config(self, config):
        hf_config = super().hf_config(config)
        if config.window is not None:
            hf_config.sliding_window = max(config.window[0], 1)
        return hf_config


def _gemma2_twin(cls, name):
    return cls(name, "gemma2", "Gemma2", rope=hm.GEMMA2.capabilities.rope, extra=hm._gemma2_extra,
               takes_softmax_scale=True, takes_softcap=True, window_kind="left")


@pytest.mark.parametrize("cls, law", [
    (_Gemma2WithoutSoftcap, "softcap_matches_reference"),
    (_Gemma2WithDefaultScale, "softmax_scale_is_applied"),
    (_Gemma2WindowOffByOne, "window_combines_like_masks"),
], ids=["no-softcap", "default-scale", "window-off-by-one"])
def test_gemma2_twins_are_rejected_by_the_law_that_names_their_bug(cls, law):
    status, message = _status(_gemma2_twin(cls, f"twin.{cls.__name__}"), law)
    assert status == "fail", message
    assert _status(hm.GEMMA2, law)[0] == "pass"


class _NotNormalised(torch.nn.Module):
    """A norm a port forgot to apply: it keeps its weight (the checkpoint loads into it) and returns its input."""

    def __init__(self, norm):
        super().__init__()
        self.weight = norm.weight

    def forward(self, x):
        return x


class _Qwen3NormsSkipped(hm.HFDecoderAttentionAdapter):
    """A port of Qwen3's layer that loads q_norm and k_norm but never applies them."""

    def build(self, config, *, dtype, device):
        module = super().build(config, dtype=dtype, device=device)
        module.q_norm, module.k_norm = _NotNormalised(module.q_norm), _NotNormalised(module.k_norm)
        return module


def test_qwen3_with_its_norms_skipped_fails_qk_norm():
    twin = _Qwen3NormsSkipped("twin.qwen3.no-norms", "qwen3", "Qwen3", rope=hm.QWEN3.capabilities.rope, norms=True,
                              qk_norm=hm.QWEN3.capabilities.qk_norm)
    status, message = _status(twin, "qk_norm_matches_reference")
    assert status == "fail" and "with qk_norm over head" in message, message


class _BloomWithoutAlibi(hm.BloomAttentionAdapter):
    """A port that passes no ALiBi bias (zeros) to the layer."""

    name = "twin.bloom.no-alibi"

    def alibi(self, module, query):
        return torch.zeros_like(super().alibi(module, query))


def test_bloom_without_its_alibi_fails_alibi_matches_reference():
    status, message = _status(_BloomWithoutAlibi(), "alibi_matches_reference")
    assert status == "fail" and "with ALiBi" in message, message


class _Llama3ScalingForgotten(hm.LlamaScaledRopeAdapter):
    """Declares llama3 scaling, builds the layer's config without rope_parameters (plain RoPE)."""

    def hf_config(self, config, **extra):
        return LlamaRopeAdapter.hf_config(self, config, **extra)


def test_llama3_scaling_left_out_of_the_config_fails_rope_scaling():
    twin = _Llama3ScalingForgotten("twin.llama3.unscaled", hm.LLAMA_ROPE_SCALINGS["llama3"])
    status, message = _status(twin, "rope_scaling_matches_reference")
    assert status == "fail" and "llama3 x8" in message, message


class _GptOssSinksUndeclared(hm.HFDecoderAttentionAdapter):
    """An adapter that does not declare the sinks (they stay in the layer, at 0)."""

    def build(self, config, *, dtype, device):
        module = super().build(config, dtype=dtype, device=device)
        with torch.no_grad():
            module.sinks.zero_()
        return module


def test_gpt_oss_sinks_left_undeclared_break_the_simplex():
    twin = _GptOssSinksUndeclared("twin.gpt-oss.no-sinks", "gpt_oss", "GptOss", rope=hm.GPT_OSS_ROPE,
                                  window_kind="left", fully_masked=())
    status, message = _status(twin, "weights_form_a_simplex")
    assert status == "fail" and "row sums of weights" in message, message


class _BigCodeUnscaled(hm.GPTBigCodeMQAAdapter):
    """scale_attn_weights=False: logits not divided by sqrt(head_dim)."""

    name = "twin.gpt-bigcode.unscaled"

    def build(self, config, *, dtype, device):
        module = super().build(config, dtype=dtype, device=device)
        module.scaling = 1.0
        return module


def test_gpt_bigcode_without_its_scale_fails_the_reference():
    status, message = _status(_BigCodeUnscaled(), "output_matches_reference")
    assert status == "fail", message


# ---------------------------------------------------------------------------------- what the suite found

def test_falcon_model_adds_alibi_twice_on_the_eager_path():
    """FalconModel (alibi=True) puts alibi / sqrt(head_dim) into the attention mask for SDPA, and hands the same
    mask and alibi to the eager layer, which adds alibi itself too: eager and sdpa models disagree."""
    from transformers import FalconConfig, FalconModel

    def hidden(impl, alibi, **flags):
        config = FalconConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, alibi=alibi,
                              multi_query=False, new_decoder_architecture=False, attn_implementation=impl)
        torch.manual_seed(0)
        model = FalconModel(config).eval().double()
        with torch.no_grad():
            return model(torch.arange(1, 9)[None], **flags).last_hidden_state

    assert (hidden("eager", True) - hidden("sdpa", True)).abs().max() > 1e-3
    assert (hidden("eager", False) - hidden("sdpa", False)).abs().max() < 1e-12
    # an sdpa model asked for its attentions takes the layer's eager branch, with the same mask
    assert (hidden("sdpa", True) - hidden("sdpa", True, output_attentions=True)).abs().max() > 1e-3


def test_the_suite_finds_falcons_double_alibi():
    status, message = _status(hm.FALCON_ALIBI, "alibi_matches_reference")
    assert status == "fail" and "with ALiBi" in message, message
    assert _status(hm.FALCON_ALIBI_SDPA, "alibi_matches_reference")[0] == "pass"


DYNAMIC = hm.LLAMA_ROPE_DYNAMIC


def _dynamic_problem(L, offset=0):
    return Problem(Config(4, 1, batch_first=True, num_kv_heads=1), batch=1, L=L, S=L, self_attention=True,
                   need_weights=False, is_causal=True, rope=DYNAMIC.capabilities.rope, position_offset=offset)


def test_dynamic_ntk_rotary_keeps_the_frequencies_of_a_longer_call():
    """Trained context 16: a call of 16 tokens (positions 0-15, inside it) after one of 17 is rotated with the
    17-token base (the reset tests seq_len < 16); past the context (positions 37-38) a longer call's base stays
    too (growth only). A call of 15 tokens is reset, and passes."""
    law = LAWS["no_state_between_calls"]
    for L, offset in ((16, 0), (2, 37)):
        with pytest.raises(ConformanceFailure, match="output after another call"):
            law.check(DYNAMIC, _dynamic_problem(L, offset))
    law.check(DYNAMIC, _dynamic_problem(15))


def test_dynamic_ntk_state_is_the_declared_deviation_and_nothing_else():
    status, message = _status(DYNAMIC, "no_state_between_calls")
    assert status == "deviation", message
    fresh = hm.LlamaScaledRopeAdapter("undeclared.dynamic", hm.LLAMA_ROPE_SCALINGS["dynamic"])
    fresh.capabilities = fresh.capabilities.replace(
        deviations=[d for d in fresh.capabilities.deviations if d.law != "no_state_between_calls"])
    assert _status(fresh, "no_state_between_calls")[0] == "fail"


# ---------------------------------------------------------------------------------- what the contract cannot say

def test_gemma2_config_takes_integer_scalars_only():
    """Gemma2Config types query_pre_attn_scalar as int: the adapter writes other scalars past the check."""
    from transformers import Gemma2Config

    with pytest.raises(Exception, match="query_pre_attn_scalar"):
        Gemma2Config(query_pre_attn_scalar=2.5)
    module = hm.GEMMA2.build(Config(4, 2, num_kv_heads=1, softmax_scale=0.7), dtype=torch.float64, device="cpu")
    assert module.scaling == pytest.approx(0.7, rel=1e-15)


class _GptOssTruncatedYarn(hm.HFDecoderAttentionAdapter):
    """gpt-oss's layer built with truncate=True while declaring the shipped truncate=False."""

    def hf_config(self, config):
        hf_config = super().hf_config(config)
        hf_config.rope_parameters["truncate"] = True
        return hf_config


def test_gpt_oss_yarn_is_declared_as_shipped():
    """RopeScaling(truncate=False) is gpt-oss's own YaRN; a layer built with the other rounding fails rope scaling."""
    assert hm.GPT_OSS_ROPE.scaling.truncate is False
    twin = _GptOssTruncatedYarn("gpt-oss.truncated", "gpt_oss", "GptOss", rope=hm.GPT_OSS_ROPE, sinks=True,
                                window_kind="left", fully_masked=())
    status, message = _status(twin, "rope_scaling_matches_reference", max_examples=25)
    assert status == "fail" and "yarn x32" in message, message
