"""Hygiene: inputs untouched, nothing read or written outside them, repeatable results, options that act; a cache step
writes its new rows and nothing else; memory a call must not read can hold anything."""
import torch

from ... import tolerances
from ...errors import Mismatch
from ...kernel.cache import new_keys, unread, written
from ...kernel.requirements import AN_OPTION, CACHE_STEP, DETERMINISTIC_BACKWARD, NEW_ROWS, PACKED, UNREAD
from ...kernel.varlen import VarlenProblem
from ..registry import law


@law("hygiene", contract="kernel")
def kernel_inputs_not_modified(case):
    """q, k, v and alibi_slopes are bit-identical after the call, and after backward where it is claimed."""
    caps = case.adapter.capabilities
    x = case.inputs()
    before = {n: t.clone() for n, t in x.tensors().items()}
    if caps.backward:
        case.gradients(x, case.upstream())
    else:
        case.call(x)
    for name, saved in before.items():
        case.assert_equal(getattr(x, name), saved, f"{name} after the call", "before the call")


PAD = 7  # guard elements on each side of a tensor placed inside a larger buffer


def _inside(t):
    """``t``'s values in the middle of a NaN buffer: ``(view, buffer)``, the view with ``t``'s shape and strides."""
    buffer = torch.full((t.numel() + 2 * PAD,), float("nan"), dtype=t.dtype, device=t.device)
    view = buffer[PAD:PAD + t.numel()].view(t.shape)
    view.copy_(t)
    return view, buffer


@law("hygiene", contract="kernel")
def no_access_outside_tensors(case):
    """Inputs inside larger NaN buffers give the reference output, and the elements around them stay bit-identical: nothing is read or written past a tensor."""
    x = case.inputs()
    placed = {n: _inside(getattr(x, n)) for n in "qkv"}
    guards = {n: torch.cat([b[:PAD], b[-PAD:]]).clone() for n, (_, b) in placed.items()}
    out, _ = case.call(x.replace(**{n: view for n, (view, _) in placed.items()}))
    for n, (_, buffer) in placed.items():
        case.assert_equal(torch.cat([buffer[:PAD], buffer[-PAD:]]), guards[n],
                          f"the {PAD} elements before and after {n} in its buffer", "before the call (NaN)")
    case.assert_output(out, case.expected(x), "output with inputs inside NaN buffers")


@law("hygiene", contract="kernel")
def forward_is_bitwise_repeatable(case):
    """Two calls with the same inputs give bit-identical outputs (and LSEs, where claimed)."""
    x = case.inputs()
    lse_claimed = {"return_lse": True} if case.adapter.capabilities.lse else {}
    out, lse = case.call(x, **lse_claimed)
    out2, lse2 = case.call(x, **lse_claimed)
    case.assert_equal(out2, out, "output of the second call", "the first call")
    if lse is not None:
        case.assert_equal(lse2, lse, "lse of the second call", "the first call")


@law("hygiene", DETERMINISTIC_BACKWARD, dtypes=tolerances.HIGH_PRECISION, contract="kernel")
def deterministic_backward(case):
    """Two backward passes on the same inputs give bit-identical dq, dk and dv."""
    x = case.inputs()
    upstream = case.upstream()
    first, second = case.gradients(x, upstream), case.gradients(x, upstream)
    for name, g in first.items():
        case.assert_equal(second[name], g, f"{name} of the second backward", "the first")


def single_options(p, caps) -> list:
    """``(name, problem with that option alone)`` for each option claimed, at a value with a clear effect (on at
    least 2 queries and 3 keys, where the declared lengths allow)."""
    Lq, Lk = max(p.Lq, 2), max(p.Lk, 3)
    Lq, Lk = min(Lq, caps.max_seqlen_q or Lq), min(Lk, caps.max_seqlen_k or Lk)
    plain = p.replace(causal=False, window=None, softcap=0.0, scale=None, alibi=None, Lq=Lq, Lk=Lk)
    options = [("causal", caps.causal, plain.replace(causal=True)),
               ("softmax_scale", caps.softmax_scale, plain.replace(scale=3.0 * p.D ** -0.5)),
               ("window_size", caps.window, plain.replace(window=(0, 1))),
               ("softcap", caps.softcap, plain.replace(softcap=0.5)),
               ("alibi_slopes", caps.alibi, plain.replace(alibi="heads"))]
    return [(name, q) for name, claimed, q in options if claimed]


@law("hygiene", AN_OPTION, contract="kernel")
def options_take_effect(case):
    """Each claimed option alone (causal, softmax_scale, window_size, softcap, alibi_slopes) changes the output as the reference says: none is ignored."""
    p, caps = case.problem, case.adapter.capabilities
    for name, q in single_options(p, caps):
        plain = q.replace(causal=False, window=None, softcap=0.0, scale=None, alibi=None)
        x = case.inputs(q)
        exp = case.expected(x, q)
        without = case.expected(x, plain)
        if tolerances.max_error(without.out, exp.out) <= 2 * exp.out_tol:
            continue  # the option does nothing here (one key, say): nothing to tell apart
        out, _ = case.call(x, q)
        try:
            case.assert_output(out, exp, f"output with {name} alone")
        except Mismatch as m:
            ignored = tolerances.max_error(out, without.out) <= exp.out_tol
            raise Mismatch(m.detail + (f"; it equals the output without {name}: the option is accepted and ignored"
                                       if ignored else ""), ratio=m.ratio) from None


@law("hygiene", CACHE_STEP, NEW_ROWS, contract="kernel")
def cache_step_writes_exactly_the_new_rows(case):
    """Item b's new keys (rotated, under rotary) and values land at rows [cache_seqlens[b], + Ln); every other cache element, and its surroundings, stay."""
    p = case.problem
    x = case.inputs()
    placed = {n: _inside(getattr(x, n)) for n in ("k_cache", "v_cache")}
    guards = {n: torch.cat([b[:PAD], b[-PAD:]]).clone() for n, (_, b) in placed.items()}
    before = {n: view.clone() for n, (view, _) in placed.items()}
    case.call_cache(x.replace(**{n: view for n, (view, _) in placed.items()}))
    for n, (view, buffer) in placed.items():
        case.assert_equal(torch.cat([buffer[:PAD], buffer[-PAD:]]), guards[n],
                          f"the {PAD} elements before and after {n} in its buffer", "before the call (NaN)")
    case.assert_equal(placed["v_cache"][0], written(before["v_cache"], x, p, x.v), "v_cache after the step",
                      "before, with the new values at each item's rows [cache_seqlens, cache_seqlens + Ln)")
    keys = written(before["k_cache"], x, p, new_keys(x, p, torch.float64))  # the new rows rotated in float64
    if not p.rotary:
        case.assert_equal(placed["k_cache"][0], keys, "k_cache after the step",
                          "before, with the new keys at each item's rows [cache_seqlens, cache_seqlens + Ln)")
        return
    new = written(torch.zeros(before["k_cache"].shape[:2], dtype=torch.bool, device=x.k.device), x, p,
                  torch.ones(x.k.shape[:2], dtype=torch.bool, device=x.k.device))  # where the new rows go
    after = placed["k_cache"][0]
    case.assert_equal(after[~new], before["k_cache"][~new], "k_cache after the step, outside the new rows", "before")
    # a rotation in the kernel's dtype is a few roundings of the key's size away from the float64 one
    tol = 8 * torch.finfo(p.dtype).eps * tolerances.magnitude(x.k.double())
    case.assert_close(after[new], keys[new], tol, "the new rows of k_cache",
                      "the new keys rotated at cache_seqlens + j (in float64)", spread_of=x.k.double())


POISONS = (float("nan"), float("inf"), float("-inf"), 1e30)


def _unread_varlen(x, p) -> dict:
    """{name: bool rows} of a varlen call's q, k, v: the rows it must not read (past cu_seqlens[-1], past seqused_k)."""
    q = torch.zeros(x.q.shape[0], dtype=torch.bool, device=x.q.device)
    q[p.cu_q[-1]:] = True
    k = torch.ones(x.k.shape[0], dtype=torch.bool, device=x.k.device)
    for b in range(p.B):
        k[p.cu_k[b]:p.cu_k[b] + p.used_k[b]] = False
    return {"q": q, "k": k, "v": k}


@law("hygiene", PACKED, UNREAD, contract="kernel")
def unread_memory_is_dont_care(case):
    """Memory a call must not read, filled with NaN, +inf, -inf or 1e30, leaves its output and LSE bit-identical.

    That memory: rows past cu_seqlens[-1] and keys past seqused_k (varlen); cache rows at or past cache_seqlens,
    page slots past an item's rows, pages no table lists, cache items cache_batch_idx does not select (the cache
    step). The output rows past cu_seqlens_q[-1] are not compared (unspecified)."""
    p = case.problem
    x = case.inputs()
    lse_claimed = {"return_lse": True} if case.adapter.capabilities.lse else {}
    if isinstance(p, VarlenProblem):
        rows = slice(0, p.cu_q[-1])  # the output rows past cu_seqlens_q[-1] are unspecified

        def call(value=None):
            masks = _unread_varlen(x, p)
            xi = x if value is None else x.replace(**{n: getattr(x, n).masked_fill(m[:, None, None], value)
                                                      for n, m in masks.items()})
            out, lse = case.call_varlen(xi, **lse_claimed)
            return out[rows], None if lse is None else lse[:, rows]
    else:
        def call(value=None):
            mask = unread(x, p)[:, :, None, None]  # (first two axes of the caches, 1, 1)
            xi = x.cloned() if value is None else x.replace(k_cache=x.k_cache.masked_fill(mask, value),
                                                            v_cache=x.v_cache.masked_fill(mask, value))
            return case.call_cache(xi, **lse_claimed)
    out, lse = call()
    for value in POISONS:
        out2, lse2 = call(value)
        case.assert_equal(out2, out, f"output with the unread memory set to {value:g}", "with ordinary values there")
        if lse is not None:
            case.assert_equal(lse2, lse, f"lse with the unread memory set to {value:g}", "with ordinary values there")
