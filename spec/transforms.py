"""Layout-aware edits of a problem's inputs: permute, slice, perturb, read the masks."""
from __future__ import annotations

import torch

from . import masks
from .config import Problem
from .inputs import Inputs, generator, positions_of


def seq_axis(p: Problem) -> int:
    """Sequence axis of query/key/value: (L, N, E), (N, L, E) or unbatched (L, E)."""
    return 1 if p.layout == "batch_first" else 0


def batch_axis(p: Problem) -> int:
    return 0 if p.layout == "batch_first" else 1


def masked(inputs: Inputs, p: Problem) -> torch.Tensor:
    """Which (b, h, l, j) logits are masked (True), from both masks and the keys hidden by position
    (the causal flag, a window); (B, H, L, S) on the CPU."""
    return masks.hidden(inputs.key_padding_mask, inputs.attn_mask, batch=p.B, num_heads=p.config.num_heads,
                        queries=p.L, keys=p.S, positions=positions_of(p))


def permute_keys(inputs: Inputs, p: Problem, perm: torch.Tensor) -> Inputs:
    """Reorder keys and values (and the mask columns) by ``perm``."""
    ax = seq_axis(p)
    perm_d = perm.to(inputs.key.device)
    key = inputs.key.index_select(ax, perm_d)
    changes = dict(key=key, value=key if inputs.value is inputs.key else inputs.value.index_select(ax, perm_d))
    if inputs.key_padding_mask is not None:
        changes["key_padding_mask"] = inputs.key_padding_mask[..., perm_d]
    if inputs.attn_mask is not None:
        changes["attn_mask"] = inputs.attn_mask[..., perm_d]
    return inputs.replace(**changes)


def permute_queries(inputs: Inputs, p: Problem, perm: torch.Tensor) -> Inputs:
    """Reorder queries (and the attention mask rows) by ``perm``."""
    ax = seq_axis(p)
    perm_d = perm.to(inputs.query.device)
    changes = dict(query=inputs.query.index_select(ax, perm_d))
    if inputs.attn_mask is not None:
        changes["attn_mask"] = inputs.attn_mask[..., perm_d, :]
    return inputs.replace(**changes)


def permute_sequence(inputs: Inputs, p: Problem, perm: torch.Tensor) -> Inputs:
    """Self-attention: reorder the one input tensor, and mask rows and columns, by ``perm``."""
    both = permute_keys(permute_queries(inputs, p, perm), p, perm)
    return both.replace(key=both.query, value=both.query)  # keep q is k is v


def batch_item(inputs: Inputs, p: Problem, b: int) -> Inputs:
    """Batch item ``b`` as a batch of one (3-D mask rows b*H .. (b+1)*H)."""
    ax, H = batch_axis(p), p.config.num_heads
    take = lambda t: t.narrow(ax, b, 1)  # noqa: E731
    q = take(inputs.query)
    k = q if p.self_attention else take(inputs.key)
    changes = dict(query=q, key=k, value=k if inputs.value is inputs.key else take(inputs.value))
    if inputs.key_padding_mask is not None:
        changes["key_padding_mask"] = inputs.key_padding_mask[b:b + 1]
    if inputs.attn_mask is not None and inputs.attn_mask.dim() == 3:
        changes["attn_mask"] = inputs.attn_mask[b * H:(b + 1) * H]
    return inputs.replace(**changes)


def take_rows(out: torch.Tensor, p: Problem, rows) -> torch.Tensor:
    """Output rows (sequence positions) ``rows``, in batch-first form (N, len(rows), E)."""
    x = out.unsqueeze(0) if not p.batched else (out if p.layout == "batch_first" else out.transpose(0, 1))
    return x[:, rows]


def perturbed(t: torch.Tensor, p: Problem, positions, seed: int, magnitude: float = 10.0) -> torch.Tensor:
    """A copy of ``t`` with new finite random values at sequence ``positions`` of batch item(s)."""
    g = generator(seed, 5)
    x = t.detach().clone()
    noise = (torch.randn(x.shape, generator=g, dtype=torch.float64) * magnitude).to(x.device, x.dtype)
    ax = seq_axis(p)
    for b, j in positions:
        idx = [slice(None)] * x.dim()
        idx[ax] = j
        if p.batched:
            idx[batch_axis(p)] = b
        x[tuple(idx)] = noise[tuple(idx)]
    return x


def randperm(n: int, seed: int, stream: int = 6) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, stream))
