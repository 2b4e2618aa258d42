"""Tests of attnspec.from_linears / to_linears: nn.Linear projections <-> CanonicalWeights, both ways."""
import re

import pytest
import torch
from torch import nn

import attnspec
from attnspec import AdapterError, CanonicalWeights, from_linears, to_linears
from attnspec.weights import NAMES, randomized

E, H, Hkv = 8, 4, 2
hd = E // H
Ekv = Hkv * hd


def linears(*shapes, bias=True):
    torch.manual_seed(0)
    return [nn.Linear(i, o, bias=bias, dtype=torch.float64) for o, i in shapes]


def fresh(weights: CanonicalWeights) -> CanonicalWeights:
    return randomized(weights, torch.Generator().manual_seed(1))


def assert_same(a: CanonicalWeights, b: CanonicalWeights):
    for name in NAMES:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_exported_where_adapter_writers_look():
    assert attnspec.from_linears is from_linears and attnspec.to_linears is to_linears
    assert "from_linears" in dir(attnspec) and "MaskError" in attnspec.__all__


def test_separate_linears_are_views_and_round_trip():
    q, k, v, o = linears((E, E), (Ekv, E), (Ekv, E), (E, E))
    w = from_linears(q, k, v, o)
    assert w.Wq is q.weight and w.bk is k.bias and w.Wo is o.weight and w.bo is o.bias  # views: gradients read through
    assert (w.Wk.shape, w.bv.shape) == ((Ekv, E), (Ekv,))
    new = fresh(w)
    to_linears(new, q, k, v, o)
    assert_same(from_linears(q, k, v, o), new)


def test_fused_qkv_with_fewer_key_value_heads():
    (qkv, out) = linears((E + 2 * Ekv, E), (E, E))
    w = from_linears(qkv=qkv, out=out, split=(E, Ekv, Ekv))
    x = torch.randn(3, E, dtype=torch.float64)
    q, k, v = qkv(x).split([E, Ekv, Ekv], dim=-1)  # what the module computes: rows [q; k; v]
    torch.testing.assert_close(x @ w.Wq.T + w.bq, q, rtol=0, atol=0)
    torch.testing.assert_close(x @ w.Wk.T + w.bk, k, rtol=0, atol=0)
    torch.testing.assert_close(x @ w.Wv.T + w.bv, v, rtol=0, atol=0)
    new = fresh(w)
    to_linears(new, qkv=qkv, out=out)
    assert_same(from_linears(qkv=qkv, out=out, split=(E, Ekv, Ekv)), new)


def test_fused_qkv_three_equal_parts_by_default():
    (qkv,) = linears((3 * E, E))
    w = from_linears(qkv=qkv)
    assert w.Wq.shape == w.Wk.shape == w.Wv.shape == (E, E) and w.Wo is None and w.bo is None
    assert torch.equal(torch.cat([w.Wq, w.Wk, w.Wv]), qkv.weight)


def test_one_linear_per_head_stacks_rows_in_head_order():
    heads = [linears((hd, E), (hd, E), (hd, E)) for _ in range(H)]  # head h: its q, k, v Linears
    qs, ks, vs = ([head[i] for head in heads] for i in range(3))
    (o,) = linears((E, E))
    w = from_linears(qs, ks, vs, o)
    for h in range(H):  # head h is block h
        assert torch.equal(w.Wq[h * hd:(h + 1) * hd], qs[h].weight) and torch.equal(w.bv[h * hd:(h + 1) * hd], vs[h].bias)
    new = fresh(w)
    to_linears(new, nn.ModuleList(qs), ks, vs, o)
    assert_same(from_linears(nn.ModuleList(qs), ks, vs, o), new)


def test_without_biases_and_without_an_output_projection():
    q, k, v = linears((E, E), (E, E), (E, E), bias=False)
    w = from_linears(q, k, v)
    assert w.bq is w.bk is w.bv is w.Wo is w.bo is None
    new = fresh(w)
    to_linears(new, q, k, v)  # out=None: nothing to load
    assert_same(from_linears(q, k, v), new)


def test_absent_biases_load_as_zeros():
    q, k, v, o = linears((E, E), (E, E), (E, E), (E, E))
    w = fresh(from_linears(q, k, v, o)).replace(bq=None, bo=None)
    to_linears(w, q, k, v, o)
    assert torch.equal(q.bias, torch.zeros(E, dtype=torch.float64)) and torch.equal(o.bias, torch.zeros_like(o.bias))
    assert torch.equal(k.bias, w.bk)


def test_talking_heads_mixers_and_extra_tensors():
    (qkv, out), (pre, post) = linears((3 * E, E), (E, E)), linears((H, H), (H, H))
    bias_k = torch.randn(E, dtype=torch.float64)
    w = from_linears(qkv=qkv, out=out, mix_pre=pre, mix_post=post, bias_k=bias_k)
    assert w.mix_pre is pre.weight and w.mix_post_bias is post.bias and w.bias_k is bias_k
    new = fresh(w)
    to_linears(new, qkv=qkv, out=out, mix_pre=pre, mix_post=post)
    assert_same(from_linears(qkv=qkv, out=out, mix_pre=pre, mix_post=post, bias_k=new.bias_k), new)


def error(message: str):
    return pytest.raises(AdapterError, match=re.escape(message))


def test_misuse_raises_a_clear_adapter_error():
    (qkv,) = linears((E + 2 * Ekv, E))
    q, k, v, o = linears((E, E), (E, E), (E, E), (E, E))
    with error("from_linears takes either q, k and v, or qkv (a fused projection)"):
        from_linears(q, k)
    with error("from_linears takes either q, k and v, or qkv"):
        from_linears(q, k, v, qkv=qkv)
    with error(f"the fused qkv has {E + 2 * Ekv} rows, not three equal parts: pass split=(E, Ekv, Ekv)"):
        from_linears(qkv=qkv)
    with error(f"split=({E}, {E}, {E}), but should be the rows of q, k and v, three sizes that sum to the fused qkv's "
               f"{E + 2 * Ekv}"):
        from_linears(qkv=qkv, split=(E, E, E))
    with error("some of the per-head Linears have a bias and some do not"):
        from_linears([q, *linears((E, E), bias=False)], [k, k], [v, v])
    w = from_linears(q, k, v)  # no Wo
    with error("to_linears: the weights have no Wo to load into its Linear"):
        to_linears(w, q, k, v, o)
    with error("to_linears takes either q, k and v, or qkv"):
        to_linears(w, q)
    with error(f"cannot load a ({3 * E}, {E}) tensor into a parameter of shape ({E + 2 * Ekv}, {E})"):
        to_linears(w, qkv=qkv)  # 3E rows [Wq; Wk; Wv] for a fused projection of E + 2 Ekv


def test_a_fused_projection_with_rows_grouped_by_head_round_trips():
    """heads_interleaved=H: rows (H, 3, hd), head h's query, key and value rows in turn (BLOOM, Falcon-RW)."""
    H, hd, E = 3, 2, 6
    fused, out = nn.Linear(E, 3 * H * hd), nn.Linear(H * hd, E)
    w = from_linears(qkv=fused, out=out, heads_interleaved=H)
    rows = fused.weight.unflatten(0, (H, 3, hd))  # (H, 3, hd, E)
    assert torch.equal(w.Wk[hd:2 * hd], rows[1, 1]) and torch.equal(w.Wv[:hd], rows[0, 2])
    again = nn.Linear(E, 3 * H * hd)
    to_linears(w, qkv=again, out=nn.Linear(H * hd, E), heads_interleaved=H)
    assert torch.equal(again.weight, fused.weight) and torch.equal(again.bias, fused.bias)
    with pytest.raises(AdapterError, match="heads_interleaved=4, but the fused projection has 18 rows"):
        from_linears(qkv=fused, out=out, heads_interleaved=4)
