"""Masking: queries that see no key, hidden keys that must stay hidden, a query that sees one key, the keys a
varlen call's seqused_k leaves out."""
import torch
from hypothesis import assume

from ... import tolerances
from ...errors import Mismatch
from ...kernel.requirements import HIDES_KEYS, SEQUSED, VARLEN, ZERO_EMPTY_ROWS
from ..registry import law


@law("masking", ZERO_EMPTY_ROWS, severity="edge", contract="kernel")
def fully_masked_rows_are_zero(case):
    """A query that sees no key gets output 0 and LSE -inf, leaves the other rows right, and gets finite, zero gradients."""
    p, caps = case.problem, case.adapter.capabilities
    x = case.inputs()
    out, lse = case.call(x, return_lse=True) if caps.lse else case.call(x)
    empty = p.empty_rows()  # (Lq,): at least one, by the draw
    rows = empty.nonzero().flatten().tolist()
    case.assert_equal(out[:, empty], out.new_zeros(out[:, empty].shape), f"output[:, rows {rows}]", "zero")
    if lse is not None:
        case.assert_equal(lse[:, :, empty], lse.new_full(lse[:, :, empty].shape, float("-inf")),
                          f"lse[:, :, rows {rows}]", "-inf")
    case.assert_output(out, case.expected(x), "output (the other rows)")
    if caps.backward and p.dtype in tolerances.HIGH_PRECISION:
        grads = case.gradients(x, case.upstream())
        for name, g in grads.items():
            case.assert_finite(g, name, "a query that sees no key contributes nothing")
        dq = grads["dq"][:, empty]
        case.assert_equal(dq, torch.zeros_like(dq), f"dq[:, rows {rows}]", "zero")


def hiding(p, caps):
    """``p`` with some key hidden from a query that sees others: the causal flag, else a window of (1, 0)."""
    if p.causal or p.window is not None:
        return p
    return p.replace(causal=True) if caps.causal else p.replace(window=(1, 0))


@law("masking", HIDES_KEYS, contract="kernel")
def masked_keys_never_dominate(case):
    """A hidden key given a logit far above every visible one, and a huge value, changes no output of the queries it is hidden from (softcap too)."""
    p = hiding(case.problem, case.adapter.capabilities)
    hidden, empty = p.hidden(), p.empty_rows()
    pairs = (hidden & ~empty[:, None]).nonzero().tolist()  # (query, key) hidden from a query that sees others
    assume(pairs)
    i, j = pairs[0]
    x = case.inputs(p)
    out, _ = case.call(x, p)
    exp = case.expected(x, p)
    target = 2e6 if p.dtype in tolerances.HIGH_PRECISION else 3e4  # the logit the hidden key gets from query i
    q, k, v = (t.detach().clone() for t in (x.q, x.k, x.v))
    G = p.Hq // p.Hkv
    for h in range(0, p.Hq, G):  # the first query head of each group sets its kv head's key
        qi = q[:, i, h].double()  # (B, D)
        key = target / p.softmax_scale * qi / (qi * qi).sum(-1, keepdim=True).clamp_min(1e-12)
        k[:, j, h // G] = key.to(k.dtype)
    v[:, j] = 1e4
    out2, _ = case.call(x.replace(k=k, v=v), p)
    rows = hidden[:, j].nonzero().flatten().tolist()
    case.assert_close(out2[:, rows], out[:, rows], 2 * exp.out_tol,
                      f"output[:, rows {rows}] after key {j} (hidden from them) got logit {target:g} and value 1e4",
                      "before", spread_of=out)


@law("masking", contract="kernel")
def one_visible_key_returns_its_value(case):
    """A query that sees exactly one key returns that key's value row exactly (bit for bit)."""
    p, caps = case.problem, case.adapter.capabilities
    if caps.window and p.seed % 2:  # a window of (0, 0): each query sees the key at its own position
        p = p.replace(window=(0, 0), causal=False, Lq=min(p.Lq, p.Lk))
    else:  # a single key
        p = p.replace(Lk=1, causal=False, window=None)
    x = case.inputs(p)
    out, _ = case.call(x, p)
    visible = ~p.hidden()  # (Lq, Lk)
    G = p.Hq // p.Hkv
    for i in (visible.sum(1) == 1).nonzero().flatten().tolist():
        j = int(visible[i].nonzero()[0])
        value = x.v[:, j].repeat_interleave(G, dim=1)  # (B, Hq, Dv): query head h reads kv head h // G
        case.assert_equal(out[:, i], value.to(out.dtype), f"output[:, {i}]", f"v[:, {j}] (the one key query {i} sees)")


def truncated(x, p):
    """``(inputs, problem)`` of the varlen call whose segments hold only their first ``seqused_k`` keys (seqused_k
    left out), the tail rows kept."""
    short = p.replace(seqlens_k=p.used_k, seqused_k=None)
    keep = torch.cat([torch.arange(p.cu_k[b], p.cu_k[b] + p.used_k[b]) for b in range(p.B)]
                     + [torch.arange(p.cu_k[-1], x.k.shape[0])]).to(x.k.device)  # the rows kept, in order
    cu_k = torch.tensor(short.cu_k, dtype=torch.int32, device=x.k.device)
    return x.replace(k=x.k[keep], v=x.v[keep], cu_seqlens_k=cu_k, seqused_k=None), short


@law("masking", VARLEN, SEQUSED, contract="kernel")
def seqused_k_equals_shorter_segment(case):
    """seqused_k[b] below a segment's length gives the call whose segment b holds only its first seqused_k[b] keys."""
    p = case.problem
    x = case.inputs()
    out, _ = case.call_varlen(x)
    x2, p2 = truncated(x, p)
    out2, _ = case.call_varlen(x2, p2)
    for name, rows, exp in case.expected_parts(x):
        try:
            case.assert_close(out[rows], out2[rows], 2 * exp.out_tol, f"output of {name} with seqused_k",
                              "the call on the shorter segments", spread_of=exp.out)
        except Mismatch as m:
            full = case.expected_parts(x, p.replace(seqused_k=None))
            ignored = all(tolerances.max_error(out[r], e.out[0]) <= e.out_tol for _, r, e in full)
            raise Mismatch(m.detail + ("; it equals the reference on the whole segments: seqused_k is ignored"
                                       if ignored else ""), ratio=m.ratio) from None
