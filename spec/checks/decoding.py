"""Incremental decoding with a key/value cache (``Capabilities.decoding``: ``Adapter.new_cache`` / ``decode``).

A sequence fed through the cache, a prefill and then further tokens one at a time or in chunks, must
give the outputs of one causal self-attention call on the whole sequence, bottom-right aligned: each
token sees every token before it, cached or in its chunk. With RoPE, tokens sit at absolute positions
continuing from the prefix, so these laws also decide that decoding positions continue (the reference
rotates by absolute position). Tokens are batch-first (N, T, E) in the decoding contract.
"""
import torch

from ..case import tf32_disabled
from ..errors import Mismatch
from ..inputs import Inputs, generator
from ..reference import to_batch_first
from ..requirements import DECODING, draws
from .registry import law


def _whole(p):
    """The problem of one causal call on the whole sequence, bottom-right aligned, batch-first."""
    return p.replace(is_causal=True, causal_alignment="bottom-right", need_weights=False).with_config(batch_first=True)


def _sequence(case, p):
    """The problem's tokens, batch-first (N, L, E), and the whole-sequence problem with its inputs."""
    x = to_batch_first(case.inputs(p).query, p.config.batch_first)  # (N, L, E)
    return x, _whole(p), Inputs(x, x, x)


def _chunks(L: int, g: torch.Generator, one_at_a_time: bool) -> list:
    """Chunk sizes summing to L, at least two: a prefill then single tokens, or random cuts."""
    if one_at_a_time:
        prefill = 1 + int(torch.randint(L - 1, (1,), generator=g))
        return [prefill] + [1] * (L - prefill)
    cuts = sorted({int(c) for c in torch.randint(1, L, (1 + int(torch.randint(L - 1, (1,), generator=g)),),
                                                 generator=g)})
    return [b - a for a, b in zip([0] + cuts, cuts + [L])]


def _new_cache(case, module, batch, max_length):
    return case.guard(lambda: case.adapter.new_cache(module, batch, max_length), "new_cache(module, batch, max_length)")


def _decode(case, module, cache, x, chunks, start, key_padding_mask=None, lowest=None):
    """Feed x (N, L, E) through ``cache`` in ``chunks`` at positions start[b] + t (N,), none below ``lowest``
    (padding sits at the first real token's position): outputs (N, L, E), cache."""
    N, L, E = x.shape
    outs, t = [], 0
    for n in chunks:
        positions = start[:, None] + torch.arange(t, t + n)[None, :]  # (N, n)
        positions = positions if lowest is None else positions.clamp(min=lowest)
        kpm = None if key_padding_mask is None else key_padding_mask[:, : t + n]  # (N, cached + n)
        what = f"decode(tokens {t}..{t + n - 1} of {L}, chunks {chunks})"
        with torch.no_grad(), tf32_disabled():
            result = case.guard(lambda: case.adapter.decode(module, cache, x[:, t:t + n],
                                                            positions=positions.to(x.device),
                                                            key_padding_mask=kpm), what)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            raise Mismatch(f"{what} returned {type(result).__name__}, but should return (output tensor, cache)")
        out, cache = result
        case.assert_shape(out, (N, n, E), f"output of {what}")
        outs.append(out)
        t += n
    return torch.cat(outs, dim=1), cache  # (N, L, E)


def _against_whole_call(case, one_at_a_time: bool):
    p = case.problem
    module = case.build()
    x, whole, inputs = _sequence(case, p)
    chunks = _chunks(p.L, generator(p.seed, 8), one_at_a_time)
    start = torch.full((p.B,), p.position_offset)
    out, _ = _decode(case, module, _new_cache(case, module, p.B, p.L), x, chunks, start)
    exp = case.expected(inputs, case.weights_of(module), whole)
    case.assert_close(out, exp.output, exp.output_tol, f"decoded output (chunks {chunks})",
                      "one causal call on the whole sequence")


@law("decoding", DECODING)
def decoding_token_by_token_equals_causal_call(case):
    """A prefill then one token at a time through the cache gives the outputs of one causal call on the whole sequence (bottom-right, at absolute positions)."""
    _against_whole_call(case, one_at_a_time=True)


@law("decoding", DECODING)
def decoding_in_chunks_equals_causal_call(case):
    """Decoding in chunks of any sizes through the cache gives the outputs of one causal call on the whole sequence (bottom-right within each chunk)."""
    _against_whole_call(case, one_at_a_time=False)


@law("decoding", DECODING)
def new_cache_starts_an_independent_sequence(case):
    """After a sequence is decoded, a new cache makes the next sequence decode as if it were the first: nothing of the previous one is seen."""
    p = case.problem
    module = case.build()
    before = p.replace(seed=p.seed + 1)
    x0 = to_batch_first(case.inputs(before).query, p.config.batch_first)  # (N, L, E)
    start = torch.full((p.B,), p.position_offset)
    _decode(case, module, _new_cache(case, module, p.B, p.L), x0, _chunks(p.L, generator(p.seed, 9), False), start)
    x, whole, inputs = _sequence(case, p)
    chunks = _chunks(p.L, generator(p.seed, 8), True)
    out, _ = _decode(case, module, _new_cache(case, module, p.B, p.L), x, chunks, start)
    exp = case.expected(inputs, case.weights_of(module), whole)
    case.assert_close(out, exp.output, exp.output_tol, f"output of the second sequence (chunks {chunks})",
                      "one causal call on it alone")


@law("decoding", DECODING, draws(min_batch=2))
def padded_batch_decodes_each_item_alone(case):
    """Items left-padded to one length (padding masked, positions counted from each item's first real token) decode as each item alone."""
    p = case.problem
    module = case.build()
    g = generator(p.seed, 10)
    x, _, _ = _sequence(case, p)
    pads = torch.randint(p.L, (p.B,), generator=g)  # (N,): each item keeps at least one real token
    pads[0], pads[1] = 0, 1 + int(torch.randint(p.L - 1, (1,), generator=g))  # two items of different lengths
    padding = torch.arange(p.L)[None, :] < pads[:, None]  # (N, L): True = padding, on the left
    start = p.position_offset - pads  # (N,): each item's first real token at position_offset
    chunks = _chunks(p.L, generator(p.seed, 8), bool(p.seed % 2))
    out, _ = _decode(case, module, _new_cache(case, module, p.B, p.L), x, chunks, start,
                     padding.to(x.device), lowest=p.position_offset)
    weights = case.weights_of(module)
    for b in range(p.B):
        n, first = p.L - int(pads[b]), int(pads[b])
        alone = _whole(p.replace(batch=1, L=n, S=n))
        mine = x[b:b + 1, first:]  # (1, n, E): item b's real tokens
        exp = case.expected(Inputs(mine, mine, mine), weights, alone)
        case.assert_close(out[b:b + 1, first:], exp.output, exp.output_tol,
                          f"decoded output of item {b} (after {first} padding tokens, chunks {chunks})",
                          "the item decoded alone")
