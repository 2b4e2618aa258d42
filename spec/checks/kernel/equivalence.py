"""Equivalence of a kernel's output, LSE and gradients to the float64 reference; a varlen call's segments and a cache
step's items, each to the dense reference on its tokens; results on split keys, merged through their LSEs."""
import math

import torch
from hypothesis import assume

from ... import tolerances
from ...errors import Mismatch
from ...kernel.cache import CacheProblem, logical, relaid
from ...kernel.problem import generator
from ...kernel.requirements import (BACKWARD, CACHE_STEP, LSE, NATIVE, NO_POSITIONS, UNREAD, VARLEN,
                                    VARLEN_BACKWARD)
from ...kernel.varlen import VarlenProblem, segment_inputs
from ..registry import law


@law("equivalence", contract="kernel")
def kernel_output_matches_reference(case):
    """The output equals the float64 reference: every element within the bound, and the mean error within its own."""
    x = case.inputs()
    out, _ = case.call(x)
    case.assert_output(out, case.expected(x))


@law("equivalence", LSE, contract="kernel")
def lse_matches_reference(case):
    """The LSE is the natural-log log-sum-exp of each row's final scores, (B, Hq, Lq) float32; -inf where a query sees no key."""
    p = case.problem
    x = case.inputs()
    _, lse = case.call(x)
    exp = case.expected(x)
    try:
        case.assert_lse(lse, exp)
    except Mismatch as m:
        raise Mismatch(m.detail + _lse_diagnosis(case, lse, exp.lse, p, x), ratio=m.ratio) from None


def _lse_diagnosis(case, lse, ref, p, x) -> str:
    """What a wrong LSE looks like, when it matches a known mistake: base 2, the scale left out."""
    got, ref = lse.detach().double().cpu(), ref.double()
    ok = torch.isfinite(ref) & torch.isfinite(got) & (ref.abs() > 1e-3)
    if not bool(ok.any()):
        return ""
    ratio = float((got[ok] / ref[ok]).median())
    if abs(ratio - 1 / math.log(2)) < 1e-2:
        return (f"; the LSE is the reference times {ratio:.4f} = log2(e): a base-2 LSE (return the natural log, or "
                "declare lse_base='2')")
    unscaled = case.reference(x, p.replace(scale=1.0))[1]
    if torch.allclose(got[ok], unscaled[ok], rtol=1e-3, atol=1e-3):
        return "; the LSE equals the log-sum-exp of the unscaled scores q.k: the softmax scale is left out of it"
    return ""


@law("equivalence", BACKWARD, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def kernel_gradients_match_reference(case):
    """dq, dk and dv of sum(output * upstream) equal the reference's (a kv head's gradient summed over its query heads)."""
    case.assert_gradients_match(case.inputs())


@law("equivalence", VARLEN, contract="kernel")
def varlen_matches_reference(case):
    """Each segment of a varlen call equals the float64 dense reference on its tokens (a padded batch, unpadded), empty ones too; and the LSE (Hq, Tq).

    Zero-length segments included: no queries give no rows; no keys give output 0 and LSE -inf. The LSE is asked
    for where claimed."""
    x = case.inputs()
    out, lse = case.call_varlen(x, return_lse=True) if case.adapter.capabilities.lse else case.call_varlen(x)
    case.assert_parts(out, lse, case.expected_parts(x))


@law("equivalence", CACHE_STEP, contract="kernel")
def cache_step_matches_reference(case):
    """The output equals the float64 reference, bottom-right, over each item's cache rows [0, cache_seqlens) then its new rows; and the LSE.

    Keys and queries are rotated where rotary is drawn (new key j of item b at cache_seqlens[b] + j); the LSE is
    asked for where claimed."""
    x = case.inputs()
    out, lse = case.call_cache(x, return_lse=True) if case.adapter.capabilities.lse else case.call_cache(x)
    case.assert_parts(out, lse, case.expected_parts(x))


@law("equivalence", VARLEN, VARLEN_BACKWARD, UNREAD, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def varlen_gradients_match_reference(case):
    """dq, dk, dv of a varlen call equal each segment's reference gradients; rows no segment uses get finite, zero gradients (or as declared).

    The rows no segment uses: past cu_seqlens[-1], and keys past seqused_k; unused_gradients='finite' asks them to be
    finite only (flash-attn PR #2324: rows left torch.empty)."""
    p = case.problem
    x = case.inputs()
    leaves = x.replace(**{n: getattr(x, n).detach().clone().requires_grad_(True) for n in "qkv"})
    out, _ = case.call_varlen(leaves)
    upstream = torch.randn(out.shape, generator=generator(p.seed, 3), dtype=torch.float64)  # (Tq, Hq, Dv)
    upstream[p.cu_q[-1]:] = 0  # the tail's output is unspecified: no gradient flows from it
    case.guard(lambda: (out * upstream.to(out.dtype)).sum().backward(), "backward")
    grads = {n: getattr(leaves, n).grad for n in "qkv"}
    for name, g in grads.items():
        if g is None:
            case.fail(f"d{name} = None, but should be a tensor (backward claimed)")
    used = {"q": torch.zeros(x.q.shape[0], dtype=torch.bool), "k": torch.zeros(x.k.shape[0], dtype=torch.bool)}
    for b in range(p.B):
        rows = slice(p.cu_q[b], p.cu_q[b + 1])
        keys = slice(p.cu_k[b], p.cu_k[b] + p.used_k[b])
        used["q"][rows], used["k"][keys] = True, True
        seg, segment = segment_inputs(x, p, b), p.segment(b)
        up = upstream[rows][None]  # (1, Lq_b, Hq, Dv)
        ref = case.reference_gradients(seg, up, segment)
        plain = case.reference_gradients(seg, up, segment, dtype=tolerances.baseline_dtype(case.tol_dtype)[0])
        largest = max(tolerances.magnitude(t) for t in ref.values()) * max(
            1.0, *(tolerances.magnitude(t.double()) for t in (seg.q, seg.k, seg.v)))
        terms = max(segment.Lq, segment.Lk) * (p.Hq // p.Hkv) + max(p.D, p.dv)
        for name, got in (("dq", grads["q"][rows]), ("dk", grads["k"][keys]), ("dv", grads["v"][keys])):
            tol = tolerances.bound("gradient", case.tol_dtype, ref[name][0], [plain[name][0]], scale=largest,
                                   terms=terms)
            case.assert_close(got, ref[name][0], case.adapter.capabilities.tolerance_factor * tol,
                              f"{name} of segment {b}")
    zero = case.adapter.capabilities.unused_gradients == "zero"
    for name, g in grads.items():
        unused = g[~used["q" if name == "q" else "k"]]
        what = f"d{name} of the rows no segment uses"
        case.assert_finite(unused, what, "those rows take no part in the output")
        if zero:
            case.assert_equal(unused, torch.zeros_like(unused), what, "zero (unused_gradients='zero')")


def _merged(outs, lses):
    """``(out, lse)`` of two results on disjoint keys merged through their LSEs (natural log, each aligned with its
    output's rows and heads, a trailing axis of 1), in float64; a row that sees no key in either stays 0, -inf."""
    lse = torch.logaddexp(*[t.double() for t in lses])
    weights = [torch.where(torch.isneginf(lse), torch.zeros_like(lse), torch.exp(t.double() - lse)) for t in lses]
    return sum(w * o.double() for w, o in zip(weights, outs)), lse


def _cut(g, n: int) -> int:
    """Where to cut n keys in two: both parts non-empty where there are two keys."""
    return int(torch.randint(1, n, (1,), generator=g)) if n >= 2 else n


def split_keys(case, x, p) -> tuple:
    """``((x1, p1), (x2, p2))``: the call with each item's (or segment's) keys cut in two at a point from the seed."""
    g = generator(p.seed, 10)
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=case.device)  # noqa: E731
    if isinstance(p, VarlenProblem):
        cuts = [_cut(g, n) for n in p.used_k]
        halves = [[(p.cu_k[b], p.cu_k[b] + c), (p.cu_k[b] + c, p.cu_k[b] + n)] for b, (c, n) in
                  enumerate(zip(cuts, p.used_k))]
        parts = []
        for i, lengths in enumerate((cuts, [n - c for n, c in zip(p.used_k, cuts)])):
            part = p.replace(seqlens_k=tuple(lengths), seqused_k=None, tail_k=0)
            k, v = (torch.cat([t[h[i][0]:h[i][1]] for h in halves]) for t in (x.k, x.v))  # (T_i, Hkv, ·): part i
            parts.append((x.replace(k=k, v=v, cu_seqlens_k=ints(part.cu_k), seqused_k=None), part))
        return tuple(parts)
    if isinstance(p, CacheProblem):
        cuts = [_cut(g, n) for n in p.cache_seqlens]
        rest = [n - c for n, c in zip(p.cache_seqlens, cuts)]
        k_rows, v_rows = logical(x.k_cache, x, p), logical(x.v_cache, x, p)  # (B, S', Hkv, ·)
        moved = [t.clone() for t in (k_rows, v_rows)]
        for b, (c, n) in enumerate(zip(cuts, p.cache_seqlens)):
            for t, src in zip(moved, (k_rows, v_rows)):
                t[b, :n - c] = src[b, c:n]  # the second part's rows from row 0 on
        second = relaid(x, p, *moved).replace(cache_seqlens=ints(rest))
        return ((x.cloned().replace(cache_seqlens=ints(cuts)), p.replace(cache_seqlens=tuple(cuts))),
                (second, p.replace(cache_seqlens=tuple(rest))))
    c = _cut(g, p.Lk)
    return ((x.replace(k=x.k[:, :c], v=x.v[:, :c]), p.replace(Lk=c)),
            (x.replace(k=x.k[:, c:], v=x.v[:, c:]), p.replace(Lk=p.Lk - c)))


def _aligned(lse, packed: bool):
    """An LSE aligned with its output: (B, Hq, Lq) -> (B, Lq, Hq, 1); a varlen call's (Hq, Tq) -> (Tq, Hq, 1)."""
    return lse.transpose(0, 1)[..., None] if packed else lse.transpose(1, 2)[..., None]


@law("equivalence", LSE, NATIVE, NO_POSITIONS, contract="kernel")
def split_kv_merge_equals_full(case):
    """Results on two disjoint sets of keys, merged through their LSEs, equal the result on all the keys (the split-KV merge).

    out = sum_i exp(lse_i - lse) out_i with lse = log sum_i exp(lse_i): each item's (or segment's) keys are cut at
    a point from the seed, with no causal flag, window, ALiBi or rotary (positions would move with the cut). A merge
    that matches only when the LSEs are read in the other base says so."""
    p = case.problem
    x = case.inputs()
    packed = isinstance(p, VarlenProblem)
    caps = case.adapter.capabilities
    if caps.fully_masked_rows != "zeros" or not caps.zero_length_segments:  # a part with no key: rows that see none
        assume(min(p.used_k if packed else p.cache_seqlens if isinstance(p, CacheProblem) else [p.Lk]) >= 2)
    call = {"dense": case.call, "varlen": case.call_varlen, "kvcache": case.call_cache}[caps.entry]
    parts = [call(xi, pi, return_lse=True) for xi, pi in split_keys(case, x, p)]
    outs, lses = [o for o, _ in parts], [_aligned(t, packed) for _, t in parts]
    out, lse = _merged(outs, lses)
    expected = case.expected_parts(x) if isinstance(p, (VarlenProblem, CacheProblem)) else \
        [("the batch", None, case.expected(x))]
    for name, rows, exp in expected:
        pick = lambda t: t if rows is None else t[rows] if isinstance(rows, slice) else t[rows:rows + 1]  # noqa: E731
        ref_out, ref_lse = (exp.out[0], _aligned(exp.lse[0], True)) if packed else (exp.out, _aligned(exp.lse, False))
        # each part within its bound and rounded to the dtype, its weight off by its LSE's error: the merged output by
        # about all three, the last two at the parts' size (which cancellation can make far larger than the result's)
        size = max(tolerances.magnitude(pick(o.double())) for o in outs)
        tol = 2 * exp.out_tol + (4 * exp.lse_tol + 2 * torch.finfo(p.dtype).eps) * size
        try:
            case.assert_close(pick(out), ref_out, tol, f"merged output of {name}", "the reference on every key")
            case.assert_close(pick(lse), ref_lse, 2 * exp.lse_tol, f"merged lse of {name}", "the reference on every key")
        except Mismatch as m:
            base = next((f for f in (math.log(2), 1 / math.log(2)) if tolerances.max_error(
                pick(_merged(outs, [t * f for t in lses])[0]), ref_out) <= tol), None)
            hint = "" if base is None else (
                "; merged as base-2 LSEs they do match: the kernel's LSE is log2-sum-exp2 (return the natural log, or "
                "declare lse_base='2')" if base < 1 else "; merged as natural-log LSEs they do match: the kernel "
                "returns the natural log, not the base 2 it declares (lse_base='2')")
            raise Mismatch(m.detail + hint, ratio=m.ratio) from None
