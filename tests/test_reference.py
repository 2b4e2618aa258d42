"""Self-test: the float64 reference is nn.MultiheadAttention's semantics, and agrees with itself."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from attnspec import Capabilities, DropIn
from attnspec.case import Case
from attnspec.reference import multi_head_attention, per_head_attention
from attnspec.strategies import problems_for

TORCH = DropIn(nn.MultiheadAttention, name="torch")
FLOAT64 = dict(dtype=torch.float64)


def _reference(case, module, inputs, p, **kw):
    w = case.weights_of(module)
    return multi_head_attention(inputs.query, inputs.key, inputs.value, w, num_heads=p.config.num_heads,
                                key_padding_mask=inputs.key_padding_mask, attn_mask=inputs.attn_mask,
                                need_weights=p.need_weights, average_attn_weights=p.average_attn_weights,
                                batch_first=p.config.batch_first, add_zero_attn=p.config.add_zero_attn, **kw)


@settings(max_examples=150)
@given(problems_for(Capabilities(), **FLOAT64))
def test_reference_equals_torch_module(p):
    case = Case(TORCH, p)
    module, inputs, out, w = case.run()
    ref_out, ref_w = _reference(case, module, inputs, p)
    torch.testing.assert_close(ref_out, out.detach(), rtol=1e-12, atol=1e-12)
    if p.need_weights:
        torch.testing.assert_close(ref_w, w.detach(), rtol=1e-12, atol=1e-12)


@settings(max_examples=100)
@given(problems_for(Capabilities(), fully_masked=("batch", "row", "head"), need_weights=False, **FLOAT64))
def test_reference_fully_masked_rows_equal_torch_sdpa_path(p):
    """The 'zeros' policy is what torch's own need_weights=False path computes."""
    case = Case(TORCH, p)
    module, inputs, out, _ = case.run()
    ref_out, _ = _reference(case, module, inputs, p)
    torch.testing.assert_close(ref_out, out.detach(), rtol=1e-12, atol=1e-12)


@settings(max_examples=100)
@given(problems_for(Capabilities(), **FLOAT64))
def test_per_head_formulation_equals_reference(p):
    case = Case(TORCH, p)
    module = case.build()
    inputs = case.inputs()
    w = case.weights_of(module)
    ref_out, _ = _reference(case, module, inputs, p)
    heads = per_head_attention(inputs.query, inputs.key, inputs.value, w, num_heads=p.config.num_heads,
                               key_padding_mask=inputs.key_padding_mask, attn_mask=inputs.attn_mask,
                               batch_first=p.config.batch_first, add_zero_attn=p.config.add_zero_attn)
    torch.testing.assert_close(heads, ref_out, rtol=1e-12, atol=1e-12)


@settings(max_examples=60)
@given(problems_for(Capabilities(), **FLOAT64))
def test_reordered_reference_agrees(p):
    case = Case(TORCH, p)
    module = case.build()
    inputs = case.inputs()
    a, _ = _reference(case, module, inputs, p)
    b, _ = _reference(case, module, inputs, p, scale_keys=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_reference_gradients_are_finite_on_fully_masked_rows():
    from attnspec.config import Config, Problem
    p = Problem(Config(4, 2), batch=2, L=3, S=3, key_padding_mask_kind="bool", fully_masked="batch", seed=3)
    case = Case(TORCH, p)
    module = case.build()
    inputs = case.inputs()
    upstream = torch.randn(3, 2, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = case.reference_gradients(inputs, case.weights_of(module), upstream)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("kind, params", [
    ("linear", dict(factor=4.0)),
    ("llama3", dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=64)),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=64, truncate=False)),
    ("dynamic", dict(factor=2.0)),
])
def test_rope_scaling_frequencies_match_transformers(kind, params):
    """The reference's rescaled rotary frequencies equal Hugging Face's rope_init functions (an independent oracle;
    its float32 arithmetic bounds the agreement), in each regime of each scaling."""
    pytest.importorskip("transformers", reason="the thirdparty extra is not installed")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from attnspec.config import Rope, RopeScaling
    from attnspec.reference import rotary_frequencies

    hd, trained = 16, 64 if kind != "dynamic" else 16
    longest = trained if kind == "dynamic" else 2 * trained  # dynamic's trained context is max_position_embeddings
    config = LlamaConfig(hidden_size=2 * hd, num_attention_heads=2, head_dim=hd, max_position_embeddings=longest,
                         rope_parameters={"rope_theta": 500.0, "rope_type": kind, **params})
    theirs, their_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", **({"seq_len": 40} if kind == "dynamic" else {}))
    scaling = RopeScaling(kind, params["factor"], params.get("original_max_position_embeddings", trained),
                          **{k: v for k, v in params.items() if k.endswith("freq_factor") or k == "truncate"})
    ours, factor = rotary_frequencies(Rope(base=500.0, scaling=scaling), hd, reached=39)
    assert torch.allclose(theirs.double(), ours, rtol=1e-6, atol=0)
    assert factor == pytest.approx(their_factor)
