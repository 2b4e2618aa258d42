"""Layouts and strides: every view of the same values gives the contiguous call's result, or a clear refusal; pages
in any order give the contiguous cache's; hints (max_seqlen_*, the allocated cache, num_splits) change nothing."""
import torch

from ...errors import Mismatch
from ...kernel.cache import enlarged, logical
from ...kernel.problem import generator
from ...kernel.requirements import CACHE_STEP, PACKED, PAGED, PAGED_AND_CONTIGUOUS
from ...kernel.varlen import VarlenProblem
from ..registry import law


def _transposed(t):
    return t.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, H, D) values, stored as (B, H, L, D)


def _sliced_heads(t):
    B, L, H, D = t.shape
    wider = torch.cat([t.new_full((B, L, 1, D), float("nan")), t], dim=2)  # (B, L, H + 1, D), NaN in head 0
    return wider[:, :, 1:]  # (B, L, H, D): a view that skips a head


def _offset(t):
    n = t.numel()
    storage = torch.cat([t.new_full((3,), float("nan")), t.reshape(-1)])  # (3 + n,)
    return storage[3:3 + n].view(t.shape)  # the same values, at storage offset 3


def _inner_stride(t):
    doubled = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)  # (B, L, H, D, 2)
    return doubled[..., 0]  # (B, L, H, D) with stride 2 in D


def _expanded(t):
    return t[:, :, :1].expand(t.shape)  # (B, L, H, D): one head, stride 0 across heads


# name -> (how each of q, k, v is laid out, the strides claim under which it must be accepted)
LAYOUTS = {
    "transposed views (stored (B, H, L, D))": (_transposed, "unit-last-dim"),
    "heads sliced from a wider tensor": (_sliced_heads, "unit-last-dim"),
    "a storage offset": (_offset, "contiguous"),
    "k and v expanded from one head (stride 0)": (_expanded, "unit-last-dim"),
    "a last dimension of stride 2": (_inner_stride, "any"),
}
ORDER = ("contiguous", "unit-last-dim", "any")


@law("paths", contract="kernel")
def strided_inputs_equal_contiguous(case):
    """Transposed views, sliced heads, offsets, stride-0 kv, a strided last dim give the reference output (or, beyond the declared strides, an error)."""
    caps = case.adapter.capabilities
    x = case.inputs()
    for name, (layout, needs) in LAYOUTS.items():
        expanded = name.startswith("k and v expanded")
        values = x.replace(k=layout(x.k), v=layout(x.v)) if expanded else \
            x.replace(q=layout(x.q), k=layout(x.k), v=layout(x.v))
        plain = values.replace(k=values.k.contiguous(), v=values.v.contiguous())
        accepted = ORDER.index(caps.strides) >= ORDER.index(needs)
        try:
            out, _ = case.call(values)
        except Mismatch as m:
            if accepted or not m.detail.startswith("attn("):
                raise Mismatch(f"with {name}: {m.detail}" + (f" (strides={caps.strides!r} is claimed)" if accepted
                                                              else "")) from None
            continue  # refused, as its declared strides allow
        case.assert_output(out, case.expected(plain), "output", f"the reference (inputs as {name})")


@law("paths", CACHE_STEP, PAGED_AND_CONTIGUOUS, contract="kernel")
def paged_equals_contiguous(case):
    """A paged cache (pages of any size, in any order, the last one partly filled) gives the output of the same rows in a contiguous cache."""
    p = case.problem
    x = case.inputs()
    flat = p.replace(page_size=None, spare_pages=0)
    xc = case.inputs(flat)  # the same rows, from the same seed, in one (B, S, Hkv, D) cache
    out, _ = case.call_cache(x)
    out_c, _ = case.call_cache(xc, flat)
    for name, b, exp in case.expected_parts(x):
        case.assert_close(out[b], out_c[b], 2 * exp.out_tol, f"output of {name}, paged by {p.page_size}",
                          "the contiguous cache's", spread_of=exp.out)
    n = max(p.cache_seqlens) + p.Ln
    for name in ("k_cache", "v_cache"):
        rows, rows_c = logical(getattr(x, name), x, p)[:, :n], logical(getattr(xc, name), xc, flat)[:, :n]
        for b, length in enumerate(p.cache_seqlens):
            case.assert_equal(rows[b, :length + p.Ln], rows_c[b, :length + p.Ln],
                              f"item {b}'s rows of the paged {name} after the step", "the contiguous cache's")


@law("paths", CACHE_STEP, PAGED, contract="kernel")
def page_relabelling_is_bitwise(case):
    """Moving every page to another place in the pool, and the block table with it, leaves the output and LSE bit-identical."""
    p = case.problem
    x = case.inputs()
    lse_claimed = {"return_lse": True} if case.adapter.capabilities.lse else {}
    out, lse = case.call_cache(x.cloned(), **lse_claimed)
    moved = torch.randperm(p.num_pages, generator=generator(p.seed, 12)).to(x.k_cache.device)  # page i -> moved[i]
    relabel = lambda pool: pool.new_empty(pool.shape).index_copy_(0, moved, pool)  # noqa: E731
    table = moved[x.block_table.long()].to(x.block_table.dtype)  # (B, max_pages): the same pages, new places
    x2 = x.replace(k_cache=relabel(x.k_cache), v_cache=relabel(x.v_cache), block_table=table)
    out2, lse2 = case.call_cache(x2, **lse_claimed)
    case.assert_equal(out2, out, "output with the pages moved", "before (the same pages in other places)")
    if lse is not None:
        case.assert_equal(lse2, lse, "lse with the pages moved", "before")


def _same(case, got, before, what: str, bitwise: bool, exp_parts) -> None:
    if bitwise:
        case.assert_equal(got, before, what, "the first call (bitwise_hints declares it bit-identical)")
        return
    for name, rows, exp in exp_parts:
        part = (lambda t: t[rows]) if isinstance(rows, slice) else (lambda t: t[rows:rows + 1])
        case.assert_close(part(got), part(before), 2 * exp.out_tol, f"{what}, {name}", "the first call",
                          spread_of=exp.out)


@law("paths", PACKED, contract="kernel")
def hints_change_nothing(case):
    """Larger max_seqlen_q and max_seqlen_k, a larger allocated cache, and each num_splits (1, 2, 3, 0) leave the result the same."""
    p, caps = case.problem, case.adapter.capabilities
    x = case.inputs()
    varlen = isinstance(p, VarlenProblem)
    call = case.call_varlen if varlen else lambda xi, pi=None, **o: case.call_cache(xi.cloned(), pi, **o)
    out, _ = call(x)
    exp = case.expected_parts(x)
    rows = slice(0, p.cu_q[-1]) if varlen else slice(None)  # the rows past cu_seqlens_q[-1] are unspecified
    if varlen:
        wider = p.replace(max_seqlen_extra=p.max_seqlen_extra + 37)
        got, _ = call(x, wider)
        _same(case, got[rows], out[rows], f"output with max_seqlen_q={wider.max_seqlen_q}, max_seqlen_k="
              f"{wider.max_seqlen_k}", "max_seqlen" in caps.bitwise_hints, exp)
    else:
        x2, p2 = enlarged(x, p, 7 if not p.page_size else 2 * p.page_size)
        got, _ = call(x2, p2)
        _same(case, got, out, f"output with {p2.rows} rows allocated, not {p.rows}",
              "cache_length" in caps.bitwise_hints, exp)
    if caps.num_splits:
        first, _ = call(x, p.replace(num_splits=1))
        for n in (2, 3, 0):
            got, _ = call(x, p.replace(num_splits=n))
            _same(case, got[rows], first[rows], f"output with num_splits={n}", "num_splits" in caps.bitwise_hints,
                  exp)
