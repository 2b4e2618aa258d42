"""Tests of attnspec.masks: the helpers that convert nn.MultiheadAttention's masks for adapters."""
import functools
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnspec.masks import (
    MaskError,
    additive,
    combined,
    heads_folded,
    heads_unfolded,
    keep,
    lengths_from_padding,
    padding_as_4d,
    position_mask,
    with_positions,
    with_visible_keys,
)

B, H, L, S, E = 2, 3, 4, 5, 6
SIZES = {"batch": B, "num_heads": H, "queries": L, "keys": S}
NEG = float("-inf")


def raises(message: str):
    return pytest.raises(MaskError, match=re.escape(message))


def bool_mask(*shape, seed=0):
    """A random bool mask (True = masked) that never masks key 0, so no row is fully masked."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) < 0.4
    m[..., 0] = False
    return m


def float_mask(*shape, seed=0, biases=True):
    """-inf where bool_mask is True, random finite biases (or 0) elsewhere."""
    g = torch.Generator().manual_seed(seed + 100)
    bias = torch.randn(shape, generator=g, dtype=torch.float64) if biases else torch.zeros(shape)
    return bias.to(torch.float64).masked_fill(bool_mask(*shape, seed=seed), NEG)


# -- additive, keep ---------------------------------------------------------------------------
def test_mask_error_is_a_value_error():
    assert issubclass(MaskError, ValueError)


def test_additive_bool_is_neg_inf_where_masked():
    m = torch.tensor([[True, False], [False, True]])
    out = additive(m, torch.float16)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.tensor([[NEG, 0.0], [0.0, NEG]], dtype=torch.float16))


def test_additive_float_is_cast_and_none_stays_none():
    m = torch.tensor([0.5, NEG, -2.0], dtype=torch.float32)
    assert torch.equal(additive(m, torch.float64), m.double())
    assert additive(None, torch.float32) is None


def test_keep_inverts_polarity():
    m = bool_mask(B, S)
    assert torch.equal(keep(m), ~m)
    assert torch.equal(keep(m.double().masked_fill(m, NEG)), ~m)  # float of 0 and -inf
    assert keep(None) is None


def test_round_trips():
    m = bool_mask(B, S)
    assert torch.equal(keep(additive(m, torch.float32)), ~m)
    assert torch.equal(torch.isneginf(additive(m, torch.float64)), m)
    am = bool_mask(B * H, L, S)
    assert torch.equal(heads_folded(heads_unfolded(am, **SIZES)), am)
    assert torch.equal(padding_as_4d(m, batch=B, keys=S).reshape(B, S), m)


@pytest.mark.parametrize("fn", [lambda m: additive(m, torch.float32), keep])
def test_integer_masks_are_rejected(fn):
    with raises("mask.dtype = torch.int64, but should be bool (True = masked) or floating"):
        fn(torch.zeros(B, S, dtype=torch.long))


def test_additive_needs_a_floating_dtype():
    with raises("dtype = torch.int32, but should be floating"):
        additive(bool_mask(B, S), torch.int32)


def test_keep_rejects_float_biases():
    m = torch.tensor([[0.0, NEG, 0.25]])
    with raises("mask[0, 2] = 0.25, but should be 0 or -inf") as e:
        keep(m)
    assert "lost" in str(e.value)


# -- shapes -----------------------------------------------------------------------------------
def test_padding_as_4d():
    m = float_mask(B, S)
    out = padding_as_4d(m, batch=B, keys=S)
    assert out.shape == (B, 1, 1, S) and out.dtype == m.dtype
    assert torch.equal(out[:, 0, 0], m)
    unbatched = padding_as_4d(m[1], batch=1, keys=S)
    assert unbatched.shape == (1, 1, 1, S) and torch.equal(unbatched[0, 0, 0], m[1])
    assert padding_as_4d(None, batch=B, keys=S) is None


@pytest.mark.parametrize("shape, message", [
    ((2, 5), "key_padding_mask.shape = (2, 5), but should be (B, S) = (2, 4)"),
    ((4,), ("key_padding_mask.shape = (4,), but should be (B, S) = (2, 4) "
            "(a 1-D, unbatched mask needs batch=1)")),
    ((1, 4), "key_padding_mask.shape = (1, 4), but should be (B, S) = (2, 4)"),  # no broadcasting
    ((2, 1, 1, 4), "key_padding_mask.shape = (2, 1, 1, 4), but should be (B, S) = (2, 4)"),
])
def test_padding_as_4d_rejects_wrong_shapes(shape, message):
    with raises(message):
        padding_as_4d(torch.zeros(shape, dtype=torch.bool), batch=2, keys=4)


def test_padding_as_4d_rejects_integer_masks():
    with raises("key_padding_mask.dtype = torch.uint8"):
        padding_as_4d(torch.zeros(B, S, dtype=torch.uint8), batch=B, keys=S)


def test_heads_unfolded_maps_row_b_times_h_plus_h_to_b_h():
    am = float_mask(B * H, L, S)
    out = heads_unfolded(am, **SIZES)
    assert out.shape == (B, H, L, S) and out.dtype == am.dtype
    for b in range(B):
        for h in range(H):
            for i in range(L):
                for j in range(S):
                    assert out[b, h, i, j].item() == am[b * H + h, i, j].item()


def test_heads_unfolded_2d_and_unbatched():
    am = bool_mask(L, S)
    out = heads_unfolded(am, **SIZES)
    assert out.shape == (1, 1, L, S) and torch.equal(out[0, 0], am)
    per_head = bool_mask(H, L, S)  # unbatched 3-D: (H, L, S)
    out = heads_unfolded(per_head, batch=1, num_heads=H, queries=L, keys=S)
    assert out.shape == (1, H, L, S) and torch.equal(out[0], per_head)
    assert heads_unfolded(None, **SIZES) is None


@pytest.mark.parametrize("shape", [(L, S + 1), (B * H + 1, L, S), (H, L, S), (B, H, L, S), (S,)])
def test_heads_unfolded_rejects_wrong_shapes(shape):
    message = (f"attn_mask.shape = {shape}, but should be (L, S) = ({L}, {S}) or "
               f"(B*H, L, S) = ({B * H}, {L}, {S})")
    with raises(message):
        heads_unfolded(torch.zeros(shape, dtype=torch.bool), **SIZES)


def test_heads_unfolded_rejects_integer_masks():
    with raises("attn_mask.dtype = torch.int64"):
        heads_unfolded(torch.zeros(L, S, dtype=torch.long), **SIZES)


def test_heads_folded():
    m = bool_mask(B, H, L, S)
    out = heads_folded(m)
    assert out.shape == (B * H, L, S)
    for b in range(B):
        for h in range(H):
            assert torch.equal(out[b * H + h], m[b, h])
    with raises("mask4d.shape = (6, 4, 5), but should be (B, H, L, S)"):
        heads_folded(out)


# -- combined ---------------------------------------------------------------------------------
KPMS = {"none": None, "bool": bool_mask(B, S, seed=1), "float": float_mask(B, S, seed=1),
        "float_no_bias": float_mask(B, S, seed=1, biases=False)}
AMS = {"none": None, "bool2d": bool_mask(L, S, seed=2), "float2d": float_mask(L, S, seed=2),
       "bool3d": bool_mask(B * H, L, S, seed=3), "float3d": float_mask(B * H, L, S, seed=3),
       "float3d_no_bias": float_mask(B * H, L, S, seed=3, biases=False)}


def _has_biases(m):
    return m is not None and m.is_floating_point() and not ((m == 0) | torch.isneginf(m)).all()


def _mha_and_sdpa(kpm, am, form, batched=True):
    """nn.MultiheadAttention's output and weights with the masks, and the same computed per head
    by SDPA and a softmax with the combined mask."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64).eval()
    q, k, v = (torch.randn(B, n, E, dtype=torch.float64) for n in (L, S, S))
    if not batched:
        q, k, v = q[0], k[0], v[0]
    with torch.no_grad():
        out, w = mha(q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False)
        dtype = torch.float64 if form == "additive" else None
        mask = combined(kpm, am, **{**SIZES, "batch": B if batched else 1}, dtype=dtype, form=form)
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        if not batched:
            q, k, v = q[None], k[None], v[None]
        D = E // H
        # (B, n, E) -> (B, H, n, D)
        qh, kh, vh = ((x @ wt.T + bt).unflatten(-1, (H, D)).transpose(1, 2)
                      for x, wt, bt in ((q, wq, bq), (k, wk, bk), (v, wv, bv)))
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # (B, H, L, D)
        o = mha.out_proj(o.transpose(1, 2).flatten(2))  # (B, H, L, D) -> (B, L, E)
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(D)  # (B, H, L, S)
        if mask is None:
            pass
        elif mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, NEG)
        else:
            logits = logits + mask
        ws = logits.softmax(-1)  # (B, H, L, S)
    if not batched:
        o, ws = o[0], ws[0]
    return (out, w), (o, ws)


# every pair of masks in additive form, and the pairs without float biases in keep form
PAIRS = [(form, kpm, am) for form in ("additive", "keep") for kpm in KPMS for am in AMS
         if form == "additive" or not (_has_biases(KPMS[kpm]) or _has_biases(AMS[am]))]


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("form, kpm, am", PAIRS, ids=[f"{f}-kpm_{k}-am_{a}" for f, k, a in PAIRS])
def test_combined_matches_multihead_attention(form, kpm, am):
    (out, w), (o, ws) = _mha_and_sdpa(KPMS[kpm], AMS[am], form)
    torch.testing.assert_close(o, out)
    torch.testing.assert_close(ws, w)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("form", ["additive", "keep"])
def test_combined_matches_unbatched_multihead_attention(form):
    kpm = bool_mask(S, seed=4)
    am = float_mask(H, L, S, seed=5, biases=form == "additive")
    (out, w), (o, ws) = _mha_and_sdpa(kpm, am, form, batched=False)
    torch.testing.assert_close(o, out)
    torch.testing.assert_close(ws, w)


@pytest.mark.parametrize("kpm, am, shape", [
    ("bool", "none", (B, 1, 1, S)), ("none", "bool2d", (1, 1, L, S)),
    ("float_no_bias", "bool2d", (B, 1, L, S)), ("none", "float3d_no_bias", (B, H, L, S)),
    ("bool", "bool3d", (B, H, L, S)),
])
@pytest.mark.parametrize("form", ["additive", "masked", "keep"])
def test_combined_shapes(kpm, am, shape, form):
    assert combined(KPMS[kpm], AMS[am], **SIZES, form=form).shape == shape


def test_combined_forms_agree():
    kpm, am = KPMS["float_no_bias"], AMS["bool3d"]
    added = combined(kpm, am, **SIZES, dtype=torch.float32)
    masked = combined(kpm, am, **SIZES, form="masked")
    assert masked.dtype == torch.bool and added.dtype == torch.float32
    assert torch.equal(masked, torch.isneginf(added))
    assert torch.equal(combined(kpm, am, **SIZES, form="keep"), ~masked)
    expected = kpm[:, None, None, :].isneginf() | am.reshape(B, H, L, S)
    assert torch.equal(masked, expected)


def test_combined_none_and_default_dtype():
    for form in ("additive", "masked", "keep"):
        assert combined(None, None, **SIZES, form=form) is None
    assert combined(KPMS["bool"], AMS["bool2d"], **SIZES).dtype == torch.get_default_dtype()
    kpm32 = KPMS["float"].float()
    assert combined(kpm32, None, **SIZES).dtype == torch.float32
    assert combined(kpm32, AMS["float2d"], **SIZES).dtype == torch.float64


@pytest.mark.parametrize("form", ["masked", "keep"])
def test_combined_bool_forms_reject_float_biases(form):
    kpm = torch.zeros(B, S, dtype=torch.float64)
    kpm[1, 3] = 0.5
    with raises(f"key_padding_mask[1, 3] = 0.5, but should be 0 or -inf: form={form!r}"):
        combined(kpm, None, **SIZES, form=form)
    am = torch.zeros(B * H, L, S)
    am[4, 2, 1] = -1.0
    with raises("attn_mask[4, 2, 1] = -1, but should be 0 or -inf") as e:  # the 3-D index
        combined(None, am, **SIZES, form=form)
    assert "biases" in str(e.value) and "lost" in str(e.value)


def test_combined_rejects_bad_arguments():
    with raises("key_padding_mask.shape = (2, 6), but should be (B, S) = (2, 5)"):
        combined(torch.zeros(B, S + 1, dtype=torch.bool), None, **SIZES)
    with raises("attn_mask.shape = (4, 4), but should be (L, S) = (4, 5)"):
        combined(None, torch.zeros(L, L), **SIZES)
    with raises("attn_mask.dtype = torch.int32"):
        combined(None, torch.zeros(L, S, dtype=torch.int32), **SIZES)
    with raises("key_padding_mask.dtype = torch.int64"):
        combined(torch.zeros(B, S, dtype=torch.long), None, **SIZES, form="keep")
    with raises("form = 'bool', but should be one of 'additive', 'masked', 'keep'"):
        combined(KPMS["bool"], None, **SIZES, form="bool")
    with raises("dtype = torch.float32, but form='keep' makes a bool mask"):
        combined(KPMS["bool"], None, **SIZES, dtype=torch.float32, form="keep")


# -- lengths ----------------------------------------------------------------------------------
def test_lengths_from_padding():
    kpm = torch.tensor([[False, False, True, True], [False, False, False, False],
                        [True, True, True, True]])
    assert torch.equal(lengths_from_padding(kpm, batch=3, keys=4), torch.tensor([2, 4, 0]))
    as_float = torch.zeros(3, 4).masked_fill(kpm, NEG)
    assert torch.equal(lengths_from_padding(as_float, batch=3, keys=4), torch.tensor([2, 4, 0]))
    assert torch.equal(lengths_from_padding(kpm[0], batch=1, keys=4), torch.tensor([2]))


def test_lengths_from_padding_rejects_what_lengths_cannot_express():
    kpm = torch.tensor([[False, True, True], [False, True, False]])
    with raises("key_padding_mask[1, 1] is masked but key_padding_mask[1, 2] is not"):
        lengths_from_padding(kpm, batch=2, keys=3)
    with raises("key_padding_mask[0] is masked but key_padding_mask[1] is not"):
        lengths_from_padding(torch.tensor([True, False]), batch=1, keys=2)
    with raises("key_padding_mask[0, 1] = 0.5, but should be 0 or -inf"):
        lengths_from_padding(torch.tensor([[0.0, 0.5]]), batch=1, keys=2)
    with raises("key_padding_mask.shape = (2, 3), but should be (B, S) = (2, 4)"):
        lengths_from_padding(kpm, batch=2, keys=4)
    with raises("key_padding_mask.dtype = torch.int64"):
        lengths_from_padding(kpm.long(), batch=2, keys=3)


# -- unchecked sizes, HF's fill, positions ---------------------------------------------------
def test_unchecked_sizes_pass_a_wrong_mask_on():
    """queries/keys None: the masks' own sizes, so a mask of the wrong size reaches the module unchanged."""
    kpm = bool_mask(B, S + 1)
    assert torch.equal(padding_as_4d(kpm, batch=B, keys=None), kpm[:, None, None, :])  # (B, 1, 1, S + 1)
    am = bool_mask(B * H, L + 1, S)
    assert torch.equal(heads_unfolded(am, batch=B, num_heads=H, queries=None, keys=None), am.reshape(B, H, L + 1, S))
    merged = combined(kpm, None, batch=B, num_heads=H, queries=None, keys=None, form="masked")
    assert merged.shape == (B, 1, 1, S + 1)
    with raises("key_padding_mask.shape = (3, 6), but should be (B, S) = (2, 6)"):  # the batch is still checked
        padding_as_4d(bool_mask(3, S + 1), batch=B, keys=None)
    with raises("attn_mask.shape = (5, 4, 5), but should be (L, S) = (4, 5) or (B*H, L, S) = (6, 4, 5)"):
        heads_unfolded(bool_mask(5, L, S), batch=B, num_heads=H, queries=None, keys=None)
    with raises("attn_mask.dtype = torch.int64"):  # and the dtype
        heads_unfolded(torch.zeros(L, S, dtype=torch.long), batch=B, num_heads=H, queries=None, keys=None)


def test_additive_fill_is_applied_once_where_bool_masks_overlap():
    """Hugging Face's finfo.min where two bool masks hide the same logit stays finfo.min (twice would be -inf)."""
    lowest = torch.finfo(torch.float32).min
    kpm, am = torch.ones(B, S, dtype=torch.bool), torch.ones(L, S, dtype=torch.bool)
    out = combined(kpm, am, **SIZES, dtype=torch.float32, fill=lowest)
    assert out.shape == (B, 1, L, S) and (out == lowest).all()
    biased = combined(kpm, AMS["float2d"].float(), **SIZES, dtype=torch.float32, fill=lowest)
    assert torch.equal(biased, lowest + AMS["float2d"].float().expand(B, 1, L, S))  # floats still add


def test_additive_equals_the_sum_of_additive_masks_with_neg_inf():
    """With fill = -inf, merging the bool masks first changes nothing: the same as adding each mask."""
    positions = position_mask(L, S, is_causal=True)
    for kpm, am in itertools.product(KPMS.values(), AMS.values()):
        merged = combined(kpm, am, **SIZES, dtype=torch.float64, positions=positions)
        parts = [additive(padding_as_4d(kpm, batch=B, keys=S), torch.float64),
                 additive(heads_unfolded(am, **SIZES), torch.float64), additive(positions[None, None], torch.float64)]
        summed = functools.reduce(torch.add, [p for p in parts if p is not None])
        assert torch.equal(merged, summed)


def test_with_positions_keeps_the_form_of_attn_mask():
    causal = position_mask(L, S, is_causal=True)  # (L, S): True = future
    am = bool_mask(B * H, L, S)
    assert torch.equal(with_positions(am, causal), am | causal)
    fm = float_mask(L, S)
    got = with_positions(fm, causal)
    assert got.dtype == fm.dtype and torch.equal(got, fm.masked_fill(causal, NEG))  # biases kept elsewhere
    assert with_positions(None, causal) is causal and with_positions(fm, None) is fm


def test_with_positions_rejects_what_does_not_fit():
    causal = position_mask(L, S, is_causal=True)
    with raises(f"positions has dtype torch.bool and shape ({L}, {S}), but should be bool (L, S) = ({L}, {S + 1})"):
        with_positions(bool_mask(L, S + 1), causal)
    with raises("positions has dtype torch.float32"):
        with_positions(bool_mask(L, S), causal.float())
    with raises("attn_mask.dtype = torch.int64"):
        with_positions(torch.zeros(L, S, dtype=torch.long), causal)
    with raises(f"attn_mask.shape = ({S},), but should be (L, S) or (B*H, L, S)"):
        with_positions(torch.zeros(S, dtype=torch.bool), causal)


def test_with_visible_keys_first_or_last():
    m = bool_mask(B, 1, L, S)
    assert torch.equal(with_visible_keys(m, 2), torch.cat([m, torch.zeros(B, 1, L, 2, dtype=torch.bool)], -1))
    assert torch.equal(with_visible_keys(m, 1, first=True), F.pad(m, (1, 0), value=False))
    assert with_visible_keys(m, 0, first=True) is m
