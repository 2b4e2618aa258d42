"""Mask helpers for adapters: ``nn.MultiheadAttention``'s masks in the forms real modules take.

The suite calls an adapter's ``call`` with masks as ``torch.nn.MultiheadAttention`` takes
them. Names: B batch, H heads, L queries, S keys.

* ``key_padding_mask``: (B, S), or (S,) unbatched. Where it is ``True`` (bool), key ``s``
  of batch ``b`` is ignored; a float mask is added to the logits (``-inf`` = ignored).
* ``attn_mask``: (L, S), the same for every batch and head, or (B*H, L, S), where row
  ``b*H + h`` is batch ``b``, head ``h`` ((H, L, S) unbatched). Same polarity: bool
  ``True`` = masked, floats added.

``nn.MultiheadAttention`` turns each bool mask into -inf (masked) and 0 (elsewhere) and adds
the two masks to the logits.

Modules take other forms: one float mask to add that broadcasts to (B, H, L, S) (Hugging
Face eager layers), a bool mask of the opposite polarity, ``True`` = attend
(``F.scaled_dot_product_attention``, HF and x-transformers bool masks), or sequence lengths.
These helpers convert between the forms. They check each mask against the sizes the adapter
passes in and raise :class:`MaskError` instead of broadcasting a mask that does not fit or
dropping float biases. For unbatched inputs pass ``batch=1``: a (S,) ``key_padding_mask``
and an (H, L, S) ``attn_mask`` are then the B = 1 case. ``queries=None`` / ``keys=None`` take
L and S from the masks unchecked: only for a module that checks them itself (an adapter that
declares ``validates_mask_shapes``), so that a mask of the wrong size still reaches it.

They are the suite's one mask algebra: its reference and its laws merge masks with them too.

Results may share memory with the input masks: do not modify them in place.
"""
from __future__ import annotations

import functools

import torch

from .errors import fmt_index, fmt_value

FORMS = ("additive", "masked", "keep")


class MaskError(ValueError):
    """A mask that a helper cannot convert without changing its meaning (dtype, shape or values)."""


def _check_dtype(name: str, mask: torch.Tensor) -> None:
    """Raise MaskError unless ``mask`` is bool or floating (the only dtypes with a meaning)."""
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise MaskError(f"{name}.dtype = {mask.dtype}, but should be bool (True = masked) "
                        "or floating (added to the logits)")


def _check_no_biases(name: str, mask: torch.Tensor, target: str) -> None:
    """Raise MaskError if float ``mask`` holds a value other than 0 and -inf (a bias)."""
    if mask.dtype == torch.bool:
        return
    bias = ~((mask == 0) | torch.isneginf(mask))
    if bias.any():
        idx = bias.nonzero()[0].tolist()
        raise MaskError(f"{fmt_index(name, idx)} = {fmt_value(mask[tuple(idx)].item())}, but "
                        f"should be 0 or -inf: {target} has no room for float biases, "
                        "which would be lost (use an additive float mask)")


def _masked(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask with True = masked, from a bool mask or a float mask of 0 and -inf."""
    return mask if mask.dtype == torch.bool else torch.isneginf(mask)


def _check_floating(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise MaskError(f"dtype = {dtype}, but should be floating")


def _filled(masked: torch.Tensor, dtype: torch.dtype, fill: float) -> torch.Tensor:
    """Bool ``masked`` as ``fill`` where True and 0 elsewhere, in ``dtype``."""
    return torch.zeros(masked.shape, dtype=dtype, device=masked.device).masked_fill_(masked, fill)


def additive(mask: torch.Tensor | None, dtype: torch.dtype, *, fill: float = float("-inf")) -> torch.Tensor | None:
    """``mask`` as a float mask of ``dtype`` to add to the logits (None stays None).

    A bool mask becomes ``fill`` (-inf) where it is True (masked) and 0 elsewhere; a float mask is cast.
    """
    if mask is None:
        return None
    _check_dtype("mask", mask)
    _check_floating(dtype)
    return _filled(mask, dtype, fill) if mask.dtype == torch.bool else mask.to(dtype)


def keep(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` as a bool mask with True = attend, the polarity of SDPA's bool masks (None stays None).

    A bool mask is inverted; a float mask must hold only 0 (attend) and -inf (masked),
    otherwise MaskError: its biases would be lost.
    """
    if mask is None:
        return None
    _check_dtype("mask", mask)
    _check_no_biases("mask", mask, "keep()'s bool result")
    return ~_masked(mask)


def _own_size(given: int | None, mask: torch.Tensor, axis: int, name: str):
    """``given``, or where it is None (unchecked) the mask's own size on ``axis`` (``name`` if it has none)."""
    if given is not None:
        return given
    return mask.shape[axis] if mask.dim() >= -axis else name


def _padding_2d(key_padding_mask: torch.Tensor, batch: int, keys: int | None) -> torch.Tensor:
    """``key_padding_mask`` as (B, S), after checking its dtype and shape (S unchecked if ``keys`` is None)."""
    _check_dtype("key_padding_mask", key_padding_mask)
    keys = _own_size(keys, key_padding_mask, -1, "S")
    if batch == 1 and key_padding_mask.shape == (keys,):
        return key_padding_mask[None]  # (S,) -> (1, S)
    if key_padding_mask.shape != (batch, keys):
        hint = " (a 1-D, unbatched mask needs batch=1)" if key_padding_mask.dim() == 1 else ""
        raise MaskError(f"key_padding_mask.shape = {tuple(key_padding_mask.shape)}, but should be "
                        f"(B, S) = ({batch}, {keys}){hint}")
    return key_padding_mask


def padding_as_4d(key_padding_mask: torch.Tensor | None, *, batch: int,
                  keys: int | None) -> torch.Tensor | None:
    """``key_padding_mask`` (B, S) or unbatched (S,) as (B, 1, 1, S), same dtype (None stays None).

    ``keys=None``: S is the mask's own, unchecked (see the module's docstring)."""
    if key_padding_mask is None:
        return None
    return _padding_2d(key_padding_mask, batch, keys)[:, None, None, :]  # (B, S) -> (B, 1, 1, S)


def heads_unfolded(attn_mask: torch.Tensor | None, *, batch: int, num_heads: int, queries: int | None,
                   keys: int | None) -> torch.Tensor | None:
    """``attn_mask`` as a 4-D mask, same dtype: (L, S) -> (1, 1, L, S), (B*H, L, S) -> (B, H, L, S).

    Row ``b*H + h`` of a 3-D mask becomes ``[b, h]``. None stays None. ``queries=None`` /
    ``keys=None``: L / S are the mask's own, unchecked (see the module's docstring).
    """
    if attn_mask is None:
        return None
    _check_dtype("attn_mask", attn_mask)
    queries, keys = _own_size(queries, attn_mask, -2, "L"), _own_size(keys, attn_mask, -1, "S")
    if attn_mask.shape == (queries, keys):
        return attn_mask[None, None]  # (L, S) -> (1, 1, L, S)
    if attn_mask.shape == (batch * num_heads, queries, keys):
        return attn_mask.reshape(batch, num_heads, queries, keys)  # (B*H, L, S) -> (B, H, L, S)
    raise MaskError(f"attn_mask.shape = {tuple(attn_mask.shape)}, but should be (L, S) = "
                    f"({queries}, {keys}) or (B*H, L, S) = ({batch * num_heads}, {queries}, {keys})")


def heads_folded(mask4d: torch.Tensor) -> torch.Tensor:
    """``mask4d`` (B, H, L, S) as (B*H, L, S), ``[b, h]`` becoming row ``b*H + h``.

    This is the inverse of :func:`heads_unfolded` for a 3-D mask. Broadcast dimensions are not
    expanded: call ``mask4d.expand(B, H, L, S)`` first.
    """
    _check_dtype("mask4d", mask4d)
    if mask4d.dim() != 4:
        raise MaskError(f"mask4d.shape = {tuple(mask4d.shape)}, but should be (B, H, L, S)")
    B, H, L, S = mask4d.shape
    return mask4d.reshape(B * H, L, S)  # (B, H, L, S) -> (B*H, L, S)


def position_mask(L: int, S: int, *, is_causal=False, window=None, alignment="top-left", device=None):
    """The keys hidden by position, bool (L, S) with True = masked, or None when nothing is.

    Query i sits at key position ``pos = i`` (``"top-left"``) or ``i + S - L`` (``"bottom-right"``).
    Causal: keys after ``pos`` are hidden. ``window=(left, right)``: keys before ``pos - left`` or
    after ``pos + right`` are hidden (None: that side unbounded).
    """
    if alignment not in ("top-left", "bottom-right"):
        raise MaskError(f"alignment = {alignment!r}, but should be 'top-left' or 'bottom-right'")
    if not is_causal and (window is None or window == (None, None)):
        return None
    offset = 0 if alignment == "top-left" else S - L
    pos = torch.arange(L, device=device)[:, None] + offset  # (L, 1): each query's key position
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    hidden = torch.zeros(L, S, dtype=torch.bool, device=device)
    if is_causal:
        hidden |= j > pos
    if window is not None:
        left, right = window
        if left is not None:
            hidden |= j < pos - left
        if right is not None:
            hidden |= j > pos + right
    return hidden


def combined(key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, *, batch: int,
             num_heads: int, queries: int | None, keys: int | None, dtype: torch.dtype | None = None,
             form: str = "additive", positions: torch.Tensor | None = None, extra_keys: int = 0,
             fill: float = float("-inf")) -> torch.Tensor | None:
    """Every mask merged into one 4-D mask as ``nn.MultiheadAttention`` applies them (None if there is none).

    The result broadcasts to (B, H, L, S) and keeps size 1 where no mask varies:
    (B, 1, 1, S) for ``key_padding_mask`` alone, (1, 1, L, S) for a 2-D ``attn_mask``,
    (B, 1, L, S) for both, (B, H, L, S) with a 3-D ``attn_mask``. ``positions``: a bool (L, S) mask
    of keys hidden by position (:func:`position_mask`), merged as a bool mask is. ``extra_keys``
    always-visible key columns are appended after the S keys (``add_bias_kv``, ``add_zero_attn``).
    ``queries=None`` / ``keys=None``: L / S are the masks' own, unchecked (see the module's docstring);
    masks that then disagree fail where they are merged, with torch's broadcasting error.
    ``form`` picks its values:

    * ``"additive"``: float of ``dtype`` to add to the logits: ``fill`` (default -inf; Hugging Face
      layers use ``torch.finfo(dtype).min``) where any bool mask is True, 0 elsewhere, plus the float
      masks. The bool masks are merged before the fill, so a logit two of them hide gets ``fill``
      once (``finfo.min`` twice would overflow to -inf). ``dtype`` defaults to the float masks'
      (promoted) dtype, or ``torch.get_default_dtype()`` if every mask is bool: pass the query's dtype.
    * ``"masked"``: bool, True = masked.
    * ``"keep"``: bool, True = attend.

    The bool forms need float masks of only 0 and -inf (MaskError otherwise: biases would be lost).
    """
    if form not in FORMS:
        raise MaskError(f"form = {form!r}, but should be one of {', '.join(map(repr, FORMS))}")
    originals = {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask}
    masks = {
        "key_padding_mask": padding_as_4d(key_padding_mask, batch=batch, keys=keys),
        "attn_mask": heads_unfolded(attn_mask, batch=batch, num_heads=num_heads, queries=queries, keys=keys),
        "positions": None if positions is None else _check_positions(positions, queries, keys)[None, None],
    }  # each (B|1, H|1, L|1, S) or None; positions: (L, S) -> (1, 1, L, S)
    masks = {name: m for name, m in masks.items() if m is not None}
    if not masks:
        return None
    if form == "additive":
        floats = [m for m in masks.values() if m.is_floating_point()]
        if dtype is None:
            dtype = functools.reduce(torch.promote_types, [m.dtype for m in floats]) if floats else torch.get_default_dtype()
        _check_floating(dtype)
        parts = [m.to(dtype) for m in floats]  # summed in order: their biases add
        bools = [m for m in masks.values() if m.dtype == torch.bool]
        if bools:
            parts.append(_filled(functools.reduce(torch.logical_or, bools), dtype, fill))  # (B|1, H|1, L|1, S)
        return with_visible_keys(functools.reduce(torch.add, parts), extra_keys)  # (B|1, H|1, L|1, S')
    if dtype not in (None, torch.bool):
        raise MaskError(f"dtype = {dtype}, but form={form!r} makes a bool mask: pass dtype=None")
    for name in masks:
        if name in originals:
            _check_no_biases(name, originals[name], f"form={form!r}'s bool result")
    masked = functools.reduce(torch.logical_or, map(_masked, masks.values()))  # (B|1, H|1, L|1, S)
    masked = with_visible_keys(masked, extra_keys)
    return masked if form == "masked" else ~masked


def _check_positions(positions: torch.Tensor, queries: int | None, keys: int | None) -> torch.Tensor:
    """``positions``, after checking that it is bool (L, S) (L, S unchecked where None)."""
    L, S = _own_size(queries, positions, -2, "L"), _own_size(keys, positions, -1, "S")
    if positions.dtype != torch.bool or positions.shape != (L, S):
        raise MaskError(f"positions has dtype {positions.dtype} and shape {tuple(positions.shape)}, but should be "
                        f"bool (L, S) = ({L}, {S})")
    return positions


def with_positions(attn_mask: torch.Tensor | None, positions: torch.Tensor | None) -> torch.Tensor | None:
    """``attn_mask`` that also hides the keys ``positions`` hides, in ``attn_mask``'s own dtype and shape.

    ``positions``: bool (L, S), True = hidden (:func:`position_mask`); ``attn_mask``: (L, S) or (B*H, L, S).
    A bool ``attn_mask`` is or-ed with it, a float one gets -inf there (its values elsewhere kept); without
    ``attn_mask`` the result is ``positions``, without ``positions`` (None) it is ``attn_mask``. For a module
    that takes an ``attn_mask`` but no causal flag: ``with_positions(attn_mask, position_mask(L, S, is_causal=True))``.
    """
    if positions is None:
        return attn_mask
    if attn_mask is None:
        return _check_positions(positions, None, None)
    _check_dtype("attn_mask", attn_mask)
    if attn_mask.dim() not in (2, 3):
        raise MaskError(f"attn_mask.shape = {tuple(attn_mask.shape)}, but should be (L, S) or (B*H, L, S)")
    _check_positions(positions, *attn_mask.shape[-2:])
    if attn_mask.dtype == torch.bool:
        return attn_mask | positions  # (L, S) or (B*H, L, S)
    return attn_mask.masked_fill(positions, float("-inf"))  # (L, S) or (B*H, L, S)


def with_visible_keys(mask: torch.Tensor, extra: int, *, first: bool = False) -> torch.Tensor:
    """``mask`` (…, S) with ``extra`` key columns that mask nothing (0, or False): after the S keys, where
    ``add_bias_kv`` and ``add_zero_attn`` append theirs, or ``first`` (x-transformers' memory keys)."""
    if not extra:
        return mask
    visible = mask.new_zeros(*mask.shape[:-1], extra)  # (…, extra)
    return torch.cat([visible, mask] if first else [mask, visible], dim=-1)  # (…, S + extra)


def hidden(key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, *, batch: int, num_heads: int,
           queries: int, keys: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Which logits the masks hide, bool (B, H, L, S) on the CPU: True where a bool mask is True or a float
    mask is -inf (a float mask's finite biases hide nothing). All False without masks."""
    cpu = [None if m is None else m.detach().cpu() for m in (key_padding_mask, attn_mask, positions)]
    sizes = dict(batch=batch, num_heads=num_heads, queries=queries, keys=keys, positions=cpu[2])
    if all(m is None or m.dtype == torch.bool for m in cpu[:2]):
        total = combined(cpu[0], cpu[1], form="masked", **sizes)
    else:
        total = combined(cpu[0], cpu[1], dtype=torch.float64, **sizes)
        total = None if total is None else torch.isneginf(total)
    none = torch.zeros(batch, num_heads, queries, keys, dtype=torch.bool)
    return none if total is None else none | total  # (B, H, L, S)


def lengths_from_padding(key_padding_mask: torch.Tensor, *, batch: int, keys: int) -> torch.Tensor:
    """The number of keys each sequence attends to, (B,) int64, from a padding mask at the end.

    ``key_padding_mask`` (B, S) or unbatched (S,) must mask only trailing keys (``s >= length``)
    and, if float, hold only 0 and -inf; otherwise MaskError, as lengths cannot express it.
    """
    kpm = _padding_2d(key_padding_mask, batch, keys)  # (B, S)
    _check_no_biases("key_padding_mask", key_padding_mask, "a length")
    masked = _masked(kpm)  # (B, S)
    lengths = (~masked).sum(dim=1)  # (B,)
    trailing = torch.arange(keys, device=kpm.device) >= lengths[:, None]  # (B, S)
    wrong_rows = (masked != trailing).any(dim=1)  # (B,)
    if wrong_rows.any():
        b = int(wrong_rows.nonzero()[0])
        first = int(masked[b].int().argmax())  # the first masked key
        later = first + int((~masked[b, first:]).int().argmax())  # an unmasked key after it
        row = (b,) if key_padding_mask.dim() == 2 else ()
        raise MaskError(f"{fmt_index('key_padding_mask', (*row, first))} is masked but "
                        f"{fmt_index('key_padding_mask', (*row, later))} is not: lengths can only "
                        "express padding at the end")
    return lengths
