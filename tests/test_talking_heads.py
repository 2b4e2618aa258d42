"""TalkingHeadAttn (seed 003) against nn.MultiheadAttention and the float64 reference."""
import pytest
import torch
from torch import nn

from attnspec.impls.seed003_talking_heads import TalkingHeadAttn
from attnspec.reference import multi_head_attention
from attnspec.weights import CanonicalWeights

SHAPES = [  # (B, L, E, H)
    (1, 1, 4, 1),
    (2, 3, 4, 2),
    (3, 5, 6, 3),
    (2, 4, 8, 4),
]


def talking_heads(E, H, seed):
    """A float64 TalkingHeadAttn with every parameter random, biases included."""
    g = torch.Generator().manual_seed(seed)
    module = TalkingHeadAttn(E, H, qkv_bias=True).double()
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64) / 2)
    return module


@pytest.mark.parametrize("B, L, E, H", SHAPES)
def test_identity_mixing_equals_nn_multihead_attention(B, L, E, H):
    module = talking_heads(E, H, seed=B * 100 + L)
    with torch.no_grad():
        for mix in (module.proj_l, module.proj_w):
            mix.weight.copy_(torch.eye(H, dtype=torch.float64))
            mix.bias.zero_()
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(module.qkv.weight)  # rows [q; k; v], as packed by nn.MultiheadAttention
        mha.in_proj_bias.copy_(module.qkv.bias)
        mha.out_proj.weight.copy_(module.proj.weight)
        mha.out_proj.bias.copy_(module.proj.bias)
    x = torch.randn(B, L, E, generator=torch.Generator().manual_seed(L), dtype=torch.float64)

    expected, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("B, L, E, H", SHAPES)
def test_random_mixing_equals_reference(B, L, E, H):
    module = talking_heads(E, H, seed=B * 100 + L)
    Wq, Wk, Wv = module.qkv.weight.detach().chunk(3)
    bq, bk, bv = module.qkv.bias.detach().chunk(3)
    weights = CanonicalWeights(
        Wq=Wq, Wk=Wk, Wv=Wv, bq=bq, bk=bk, bv=bv,
        Wo=module.proj.weight.detach(), bo=module.proj.bias.detach(),
        mix_pre=module.proj_l.weight.detach(), mix_pre_bias=module.proj_l.bias.detach(),
        mix_post=module.proj_w.weight.detach(), mix_post_bias=module.proj_w.bias.detach())
    x = torch.randn(B, L, E, generator=torch.Generator().manual_seed(L), dtype=torch.float64)

    expected, _ = multi_head_attention(x, x, x, weights, num_heads=H, batch_first=True, need_weights=False)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
