"""Tensors for a problem, generated from its seed on the CPU, then moved.

Masks guarantee at least one visible key per query row and head, unless the
problem asks for fully masked rows, which are then placed on purpose.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import masks
from .config import Problem


@dataclass
class Inputs:
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    key_padding_mask: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None

    def kwargs(self) -> dict:
        return dict(key_padding_mask=self.key_padding_mask, attn_mask=self.attn_mask)

    def tensors(self) -> dict:
        return {n: t for n, t in vars(self).items() if t is not None}

    def replace(self, **changes) -> "Inputs":
        return Inputs(**{**vars(self), **changes})


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) of one problem's seed."""
    return torch.Generator("cpu").manual_seed(seed * 7919 + stream)


def layout_shape(problem: Problem, length: int, width: int) -> tuple:
    if not problem.batched:
        return (length, width)
    return (problem.B, length, width) if problem.config.batch_first else (length, problem.B, width)


def positions_of(problem: Problem):
    """The keys the causal flag and the window hide, bool (L, S) with True = masked, or None."""
    return masks.position_mask(problem.L, problem.S, is_causal=problem.is_causal, window=problem.config.window,
                               alignment=problem.causal_alignment)


def aligned_position(problem: Problem, row: int) -> int:
    """The key position of query ``row`` (see :data:`attnspec.config.ALIGNMENTS`), within 0..S-1."""
    offset = 0 if problem.causal_alignment == "top-left" else problem.S - problem.L
    return min(max(row + offset, 0), problem.S - 1)


def masked_pattern(problem: Problem, g: torch.Generator):
    """Bool patterns (True = masked): key padding (B, S) and attention (B, H, L, S) or (L, S).

    Keys hidden by position (the causal flag, a window) count as masked when the patterns
    make sure every row keeps a visible key and every item masks one."""
    B, H, L, S = problem.B, problem.config.num_heads, problem.L, problem.S
    kpm = None
    if problem.key_padding_mask_kind and problem.suffix_padding:
        lengths = torch.randint(1, S + 1, (B, 1), generator=g) if S else torch.zeros(B, 1, dtype=torch.long)  # at least one real key (if any)
        kpm = torch.arange(S)[None, :] >= lengths  # (B, S): trailing padding
    elif problem.key_padding_mask_kind:
        kpm = torch.rand(B, S, generator=g) < 0.3
    am = None
    if problem.causal_attn_mask:
        am = masks.position_mask(L, S, is_causal=True)  # (L, S): top-left aligned, as SDPA's is_causal
    elif problem.attn_mask_kind:
        am = torch.rand((B, H, L, S) if problem.mask_3d else (L, S), generator=g) < 0.3
    if problem.causal_attn_mask and problem.mask_3d:
        am = am.expand(B, H, L, S).clone()
    _ensure_visible(problem, kpm, am, g)
    _ensure_masked(problem, kpm, am, g)
    if problem.positional:  # padding a key may have emptied a row that its position leaves one key
        _ensure_visible(problem, kpm, am, g)
    _mask_on_purpose(problem, kpm, am, g)
    return kpm, am


def _combined(kpm, am, B, H, L, S, problem):
    """Every key the patterns and the problem's positions hide, bool (B, H, L, S)."""
    am = am if am is None or am.dim() == 2 else masks.heads_folded(am)  # (L, S) or (B*H, L, S), row b*H + h
    return masks.hidden(kpm, am, batch=B, num_heads=H, queries=L, keys=S, positions=positions_of(problem))


def _ensure_visible(problem, kpm, am, g):
    """Unmask one key in every fully masked row (in both masks, so it is visible)."""
    B, H, L, S = problem.B, problem.config.num_heads, problem.L, problem.S
    if S == 0:
        return
    for b, h, l in _combined(kpm, am, B, H, L, S, problem).all(-1).nonzero().tolist():
        if problem.positional:  # the key at the row's own position is the one its position never hides
            j = aligned_position(problem, l)
        else:
            j = 0 if problem.causal_attn_mask else int(torch.randint(S, (1,), generator=g))
        if kpm is not None:
            kpm[b, j] = False
        if am is not None and not problem.causal_attn_mask:
            if am.dim() == 4:
                am[b, h, l, j] = False
            else:
                am[l, j] = False


def _ensure_masked(problem, kpm, am, g):
    """Where S >= 2, give each batch item a key masked for some query row in every head
    (for self-attention, a row other than the key's own position), keeping every row a
    visible key: laws about masked keys then always have one to look at. A key padding
    mask pads a key in every item (the last one for trailing padding); else the attention
    mask masks one."""
    B, H, L, S = problem.B, problem.config.num_heads, problem.L, problem.S
    if S < 2 or L == 0:
        return
    for b in range(B):
        every_head = _combined(kpm, am, B, H, L, S, problem)[b].all(0)  # (L, S)
        if problem.self_attention:
            every_head &= ~torch.eye(L, S, dtype=torch.bool)
        if bool(kpm[b].any()) if kpm is not None else bool(every_head.any()):
            continue
        if kpm is not None:
            ordered = problem.suffix_padding or problem.causal_attn_mask  # trailing padding; causal rows all see key 0
            j = S - 1 if ordered else int(torch.randint(S, (1,), generator=g))
            if problem.positional and not problem.suffix_padding:  # a key at no query's own position, if any
                free = sorted(set(range(S)) - {aligned_position(problem, r) for r in range(L)})
                j = free[int(torch.randint(len(free), (1,), generator=g))] if free else j
            kpm[b, j] = True
            rows = range(L)
        else:
            ordered = False
            l = int(torch.randint(L, (1,), generator=g))
            j = (l + 1 + int(torch.randint(S - 1, (1,), generator=g))) % S  # any key but l
            if am.dim() == 4:
                am[b, :, l, j] = True
            else:
                am[l, j] = True
            rows = [l]
        other = 0 if kpm is not None and ordered else (j + 1) % S  # stays visible: unmask it where needed
        for l in rows:
            if bool(_combined(kpm, am, B, H, L, S, problem)[b, :, l].all(-1).any()):
                if kpm is not None:
                    kpm[b, other] = False
                if am is not None and am.dim() == 4:
                    am[b, :, l, other] = False
                elif am is not None:
                    am[l, other] = False


def _mask_on_purpose(problem, kpm, am, g):
    mode = problem.fully_masked
    if mode is None:
        return
    B, H, L = problem.B, problem.config.num_heads, problem.L
    b, h, l = (int(torch.randint(n, (1,), generator=g)) for n in (B, H, L))
    if mode == "batch":
        kpm[b, :] = True
    elif mode == "row":
        if am.dim() == 4:
            am[:, :, l, :] = True
        else:
            am[l, :] = True
    elif mode == "head":
        am[b, h, l, :] = True


def as_mask(pattern: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """A bool mask, or a float mask: -inf where masked, random finite biases elsewhere."""
    if kind == "bool":
        return pattern
    bias = torch.randn(pattern.shape, generator=g, dtype=torch.float64)
    return bias + masks.additive(pattern, torch.float64)


def make_inputs(problem: Problem, device="cpu") -> Inputs:
    """Query, key, value and masks for ``problem``, in its dtype, on ``device``."""
    c = problem.config
    g = generator(problem.seed, 1)

    def randn(length, width, scale=1.0):
        return torch.randn(layout_shape(problem, length, width), generator=g, dtype=torch.float64) * scale

    query = randn(problem.L, c.q_in, problem.input_scale)
    key = query if problem.self_attention else randn(problem.S, c.k_in, problem.input_scale)
    value = key if problem.self_attention or problem.key_is_value else randn(problem.S, c.v_in)
    kpm, am = masked_pattern(problem, g) if problem.has_mask else (None, None)
    if kpm is not None:
        kpm = as_mask(kpm, problem.key_padding_mask_kind, g)
        kpm = kpm if problem.batched else kpm[0]  # (B, S) or unbatched (S,)
    if am is not None:
        am = as_mask(am, problem.attn_mask_kind, g)
        if am.dim() == 4:  # (B*H, L, S), row b*H + h; unbatched: (H, L, S)
            am = masks.heads_folded(am)

    def move(t):
        if t is None:
            return None
        return t.to(device=device, dtype=problem.dtype if t.is_floating_point() else t.dtype)

    q = move(query)
    if problem.self_attention:
        return Inputs(q, q, q, move(kpm), move(am))
    k = move(key)
    return Inputs(q, k, k if problem.key_is_value else move(value), move(kpm), move(am))
