"""Rotary positions and incremental decoding: arguments, the reference's RoPE, and a mutant each new law kills."""
import pytest
import torch

from attnspec import Capabilities, Rope
from attnspec.impls.modern_attention import ROPE, ModernAttention
from attnspec.reference import rotary
from attnspec.runner import certify
from tests.zoo import decoding as zoo


@pytest.mark.parametrize("kwargs, named", [
    (dict(pairing="neox"), "pairing='neox'"), (dict(base=1.0), "base=1.0"), (dict(base="10000"), "base='10000'"),
    (dict(fraction=0.0), "fraction=0.0"), (dict(fraction=1.5), "fraction=1.5"),
])
def test_rope_rejects_bad_arguments_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Rope(**kwargs)


def test_capabilities_take_a_rope_or_its_fields_and_reject_others():
    assert Capabilities(rope={"pairing": "interleaved"}).rope == Rope("interleaved")
    with pytest.raises(ValueError, match="rope='rotate_half'"):
        Capabilities(rope="rotate_half")
    with pytest.raises(ValueError, match="decoding=1"):
        Capabilities(decoding=1)


def test_bundled_module_rejects_a_rope_that_rotates_an_odd_number_of_features():
    with pytest.raises(ValueError, match="head_dim=3"):
        ModernAttention(6, 2, rope=Rope())


def test_rotary_conventions_pair_features_as_declared():
    x = torch.arange(8, dtype=torch.float64).reshape(1, 1, 1, 8) + 1  # (N, H, T, hd)
    pos = torch.tensor([1])
    half, inter = rotary(x, pos, Rope("rotate_half")), rotary(x, pos, Rope("interleaved"))
    # pair 0 turns by 1 radian: (x0, x4) under rotate_half, (x0, x1) interleaved
    c, s = torch.cos(torch.tensor(1.0, dtype=torch.float64)), torch.sin(torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(half[0, 0, 0, [0, 4]], torch.stack([1 * c - 5 * s, 1 * s + 5 * c]))
    assert torch.allclose(inter[0, 0, 0, [0, 1]], torch.stack([1 * c - 2 * s, 1 * s + 2 * c]))
    partial = rotary(x, pos, Rope(fraction=0.5))
    assert torch.equal(partial[..., 4:], x[..., 4:])  # the trailing half passes unchanged


def test_rotated_dot_products_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=g,
                                                                                 dtype=torch.float64)
    for rope in (Rope("rotate_half"), Rope("interleaved", 500.0, 0.5)):
        dots = [(rotary(q, torch.tensor([i + 3]), rope) * rotary(k, torch.tensor([i]), rope)).sum() for i in (0, 11)]
        assert torch.allclose(dots[0], dots[1])


def test_positional_modules_report_permutation_laws_not_claimed_with_the_reason():
    results = certify(ROPE, laws=["self_attention_permutation_equivariance", "key_value_permutation_invariance"])
    assert [r.status for r in results] == ["not claimed"] * 2
    assert all("RoPE" in r.message for r in results), [r.message for r in results]


def test_modules_without_rope_or_decoding_report_the_new_laws_not_claimed():
    from attnspec.impls.torch_mha import ADAPTER
    laws = ["rope_depends_only_on_relative_position", "rope_at_position_zero_is_plain_attention",
            "decoding_token_by_token_equals_causal_call", "decoding_in_chunks_equals_causal_call",
            "new_cache_starts_an_independent_sequence", "padded_batch_decodes_each_item_alone"]
    assert {r.status for r in certify(ADAPTER, laws=laws)} == {"not claimed"}


@pytest.mark.parametrize("law, mutant", [  # each new law has a mutant it kills
    ("rope_depends_only_on_relative_position", "RopeTableTooShort"),
    ("rope_at_position_zero_is_plain_attention", "PositionsIgnored"),
    ("decoding_token_by_token_equals_causal_call", "PositionsRestartEachStep"),
    ("decoding_in_chunks_equals_causal_call", "TopLeftCausalInChunks"),
    ("new_cache_starts_an_independent_sequence", "CacheNotReset"),
    ("padded_batch_decodes_each_item_alone", "CachePositionOffByOne"),
])
def test_each_new_law_kills_its_mutant(law, mutant):
    result, = certify(zoo.decoding_adapter(mutant, dict(zoo.DECODING_MUTANTS)[mutant]), laws=[law])
    assert result.status == "fail", result.message
    assert f"breaks {law}" in result.message


def test_llama_with_real_rope_and_dynamic_cache_passes_the_new_laws():
    pytest.importorskip("transformers", reason="the thirdparty extra is not installed")
    from attnspec.impls.thirdparty.hf_transformers import LLAMA_ROPE_SDPA
    laws = ["rope_depends_only_on_relative_position", "rope_at_position_zero_is_plain_attention",
            "decoding_token_by_token_equals_causal_call", "decoding_in_chunks_equals_causal_call",
            "new_cache_starts_an_independent_sequence", "padded_batch_decodes_each_item_alone",
            "output_matches_reference"]
    results = certify(LLAMA_ROPE_SDPA, laws=laws, max_examples=10)
    assert {r.status for r in results} == {"pass"}, [(r.law, r.message) for r in results if r.status != "pass"]


def test_llama_rope_is_computed_in_float32_evidence():
    """LlamaRotaryEmbedding computes cos/sin in float32 whatever the dtype: undeclared, a float64 call fails."""
    pytest.importorskip("transformers", reason="the thirdparty extra is not installed")
    from attnspec.impls.thirdparty.hf_transformers import LlamaRopeAdapter
    adapter = LlamaRopeAdapter("llama-rope-undeclared", "sdpa")
    adapter.capabilities = adapter.capabilities.replace(compute_dtype=None)
    result, = certify(adapter, laws=["output_matches_reference"], dtype=torch.float64, max_examples=10)
    assert result.status == "fail" and "possibly the module computes in float32" in result.message, result.message


def test_llama_sdpa_chunk_through_a_cache_without_a_mask_is_top_left_evidence():
    """The layer's own is_causal (no mask, a chunk of T > 1 after cached tokens) reaches SDPA top-left: LlamaModel
    must pass the bottom-right mask there, as the adapter does; an adapter that passes none fails."""
    pytest.importorskip("transformers", reason="the thirdparty extra is not installed")
    from attnspec.impls.thirdparty.hf_transformers import LlamaRopeAdapter

    class NoMaskForChunks(LlamaRopeAdapter):
        def decode(self, module, cache, x, *, positions, key_padding_mask=None):
            out, _ = module(x, position_embeddings=self._rotary(module, x, positions), attention_mask=None,
                            past_key_values=cache)
            return out, cache

    result, = certify(NoMaskForChunks("llama-no-mask", "sdpa"), laws=["decoding_in_chunks_equals_causal_call"])
    assert result.status == "fail", result.message


def test_a_failing_rope_case_replays_from_its_snippet():
    from attnspec import load_impl
    from attnspec.errors import ConformanceFailure
    result, = certify(load_impl("tests.examples.rope_decoder:BROKEN"), laws=["decoding_token_by_token_equals_causal_call"])
    snippet = result.repro
    assert result.message.endswith(f"\n  reproduce: {snippet}")
    assert "rope=Rope(" in snippet
    with pytest.raises(ConformanceFailure, match="breaks decoding_token_by_token_equals_causal_call"):
        exec(snippet, {})
