"""Decoding through a cache step: token by token, and in chunks, it gives the rows of the causal prefill."""
import torch

from ...kernel.problem import generator
from ...kernel.requirements import CACHE_STEP, CAUSAL, NEW_ROWS
from ..registry import law

MOST_DECODED = 6  # the last tokens decoded one by one (the ones before them are prefilled at once)


def prefill(case):
    """The drawn step as a causal prefill: as many new rows as queries, at least two; ``(inputs, problem)``."""
    p = case.problem
    L = max(p.Lq, p.Ln, 2)
    p = p.replace(Lq=L, Ln=L, causal=True, spare_rows=p.spare_rows + max(0, p.Lq - p.Ln))
    return case.inputs(p), p


def steps(x, p, bounds: list) -> list:
    """``(inputs, problem)`` of the steps that write rows [a, b) of the prefill's new rows, one per (a, b) in
    ``bounds``, each on the cache as the steps before it leave it (the caller runs them in order)."""
    out = []
    for a, b in bounds:
        part = p.replace(Lq=b - a, Ln=b - a, cache_seqlens=tuple(n + a for n in p.cache_seqlens))
        out.append((x.replace(q=x.q[:, a:b], k=x.k[:, a:b], v=x.v[:, a:b], cache_seqlens=x.cache_seqlens + a), part))
    return out


def compare_steps(case, bounds: list, what: str) -> None:
    """The prefill in one step, then again in the steps of ``bounds`` on a fresh copy of the cache: each step's rows
    equal the prefill's (within twice the bound: each is within it of the reference)."""
    x, p = prefill(case)
    full, _ = case.call_cache(x.cloned(), p)
    exp = case.expected_parts(x, p)
    for (a, b), (xi, pi) in zip(bounds, steps(x.cloned(), p, bounds)):  # the steps share one fresh cache
        got, _ = case.call_cache(xi, pi)
        for name, item, e in exp:
            case.assert_close(got[item], full[item, a:b], 2 * e.out_tol, f"output of {name}, queries {a} to {b - 1}, "
                              f"{what}", "the same rows of the prefill in one step", spread_of=e.out)


@law("decoding", CACHE_STEP, NEW_ROWS, CAUSAL, contract="kernel")
def decode_equals_prefill(case):
    """Decoding the last tokens one step at a time (one query, one new row each) gives the rows of the causal prefill in one step, windows too."""
    _, p = prefill(case)
    first = max(0, p.Ln - MOST_DECODED)  # the tokens before are prefilled in one step
    bounds = ([(0, first)] if first else []) + [(t, t + 1) for t in range(first, p.Ln)]
    compare_steps(case, bounds, "decoded one by one")


@law("decoding", CACHE_STEP, NEW_ROWS, CAUSAL, contract="kernel")
def chunked_prefill_equals_full(case):
    """A causal prefill in chunks (each chunk's queries and new rows in one step, after the chunks before it) gives the rows of the prefill in one step."""
    _, p = prefill(case)
    cuts = sorted(set(torch.randint(1, p.Ln, (2,), generator=generator(p.seed, 13)).tolist()))  # 1 or 2 cuts
    edges = [0, *cuts, p.Ln]
    compare_steps(case, list(zip(edges[:-1], edges[1:])), f"in chunks {edges}")
