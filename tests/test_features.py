"""The causal flag, grouped-query heads and sliding windows: arguments, the reference, torch's own is_causal."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument
from torch import nn

from attnspec import Capabilities, Config
from attnspec.checks import LAWS
from attnspec.impls.modern_attention import ModernAttention
from attnspec.masks import MaskError, position_mask
from attnspec.requirements import decide
from attnspec.strategies import problems_for


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_kv_heads=3), "num_kv_heads=3"), (dict(num_kv_heads=0), "num_kv_heads=0"),
    (dict(window=(-1, 2)), "window=(-1, 2)"), (dict(window=(1,)), "window=(1,)"), (dict(window=(1.5, None)), "window"),
])
def test_config_rejects_bad_features_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Config(embed_dim=8, num_heads=4, **kwargs)


@pytest.mark.parametrize("kwargs, named", [
    (dict(causality="sometimes"), "causality='sometimes'"), (dict(causal_alignment="center"), "causal_alignment='center'"),
    (dict(masks_with_causality=("padding",)), "masks_with_causality"), (dict(window_kind="both"), "window_kind='both'"),
    (dict(grouping=2), "grouping=2"), (dict(grouping="all"), "grouping='all'"),
])
def test_capabilities_reject_bad_features_naming_the_field(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Capabilities(**kwargs)


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_kv_heads=3), "num_kv_heads=3"), (dict(window=(0, -1)), "window"),
    (dict(causal_alignment="middle"), "causal_alignment='middle'"),
])
def test_bundled_module_rejects_bad_features(kwargs, named):
    with pytest.raises(ValueError, match=named):
        ModernAttention(8, 4, **kwargs)


@pytest.mark.parametrize("law, caps, reason", [
    ("causal_flag_equals_causal_mask", Capabilities(), "the causal flag"),
    ("keys_outside_window_do_not_affect_output", Capabilities(), "a sliding window"),
    ("query_heads_permute_within_group", Capabilities(), "grouped-query heads (num_kv_heads < num_heads)"),
    ("grouped_kv_equals_repeated_heads", Capabilities(grouping="multi-query"),
     "grouped-query heads, and as many key/value heads as query heads"),
    ("self_attention_permutation_equivariance", Capabilities(causality="always"),
     "attention that can be order-free (not always causal)"),
])
def test_laws_on_features_not_claimed_say_which(law, caps, reason):
    assert decide(LAWS[law], caps).reasons == (reason,)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_a_draw_outside_the_capabilities_is_refused_naming_the_dimension():
    for constraints, dim in ((dict(is_causal=True), "'is_causal'"), (dict(windowed=True), "'windowed'"),
                             (dict(grouped=True), "'grouped'")):
        with pytest.raises(InvalidArgument, match=f"scope has no value left for {dim}"):
            problems_for(Capabilities(), **constraints).example()


@pytest.mark.parametrize("L, S", [(3, 3), (2, 5), (5, 2), (1, 4)])
def test_position_mask_alignments(L, S):
    top_left = ~torch.ones(L, S, dtype=torch.bool).tril(0)  # SDPA's is_causal: True = hidden
    bottom_right = ~torch.ones(L, S, dtype=torch.bool).tril(S - L)  # FlashAttention's causal
    assert torch.equal(position_mask(L, S, is_causal=True), top_left)
    assert torch.equal(position_mask(L, S, is_causal=True, alignment="bottom-right"), bottom_right)
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    assert torch.equal(position_mask(L, S, window=(1, 0)), (j < i - 1) | (j > i))
    assert position_mask(L, S, window=(None, None)) is None and position_mask(L, S) is None
    with pytest.raises(MaskError, match="alignment = 'left'"):
        position_mask(L, S, is_causal=True, alignment="left")


@settings(max_examples=15, deadline=None)
@given(problems_for(Capabilities(causality="flag", causal_alignment="bottom-right", grouping="any", window_kind="any",
                                 layouts=("batch_first",)), is_causal=True))
def test_flag_problems_keep_a_key_for_every_query(p):
    """Where keys are hidden by position S >= L, and every query sees the key at its own aligned position."""
    assert p.S >= p.L and p.is_causal and p.causal_alignment == "bottom-right"
    hidden = position_mask(p.L, p.S, is_causal=True, window=p.config.window, alignment=p.causal_alignment)
    if p.L:
        assert not bool(hidden.all(-1).any())


def test_torch_mha_fast_path_silently_ignores_is_causal():
    """The evidence behind impls/torch_mha.py's fast-path deviation (torch 2.13: it may be fixed later)."""
    torch.manual_seed(0)
    m = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        flagged, _ = m(x, x, x, is_causal=True, need_weights=False)
        plain, _ = m(x, x, x, need_weights=False)
        masked, _ = m(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.bool).triu(1), need_weights=False)
    if torch.allclose(flagged, masked):
        pytest.skip(f"torch {torch.__version__} honours is_causal on the fast path: drop the deviation")
    assert torch.allclose(flagged, plain)  # non-causal: the flag was ignored
    with pytest.raises(RuntimeError, match="Need attn_mask"):  # and the slow path raises
        m(x, x, x, is_causal=True)


def test_contradicting_mask_declarations_warn():
    with pytest.warns(UserWarning, match=r"key_padding_mask_kinds=\('bool',\), but with causality='always'"):
        Capabilities(causality="always", masks_with_causality=("attn_mask",), key_padding_mask_kinds=("bool",))
    with pytest.warns(UserWarning, match=r"masks_with_causality lists 'attn_mask', but attn_mask_kinds=\(\)"):
        Capabilities(causality="flag", masks_with_causality=("attn_mask",), attn_mask_kinds=())
