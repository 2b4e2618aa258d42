"""Hypothesis strategies that draw problems within an implementation's capabilities.

Hypothesis draws the structure (shapes, flags, masks, dtype, a seed); tensor values
come from the seed (:mod:`attnspec.inputs`). The draws reach the configurations that
hide classic bugs (research/mha_semantics.md §3): H=1 and H>1, B=1 and B>1, L != S,
head_dim=1, per-sample and per-head masks, unbatched input, large magnitudes; biases
are always random and non-zero. Examples shrink towards one head, one batch item,
short sequences, float64, no masks and seed 0.
"""
from __future__ import annotations

import functools

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import tolerances
from .capabilities import Capabilities
from .config import Config, Problem

# The dtypes certified on each device: float16 is a GPU format (CPU float16 matmuls are
# slow emulations that few run), bfloat16 is certified on both.
DEVICE_DTYPES = {"cpu": (torch.float64, torch.float32, torch.bfloat16),
                 "cuda": (torch.float64, torch.float32, torch.bfloat16, torch.float16)}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
# Draw weights: float64 most often (tight checks), then float32, then low precision.
DTYPE_ORDER = (torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16)
# Occasionally long sequences, to cross kernel block thresholds (pytorch#127055).
LENGTHS = st.one_of(*[st.integers(1, 5)] * 7, st.sampled_from([7, 16, 33]))
# In low precision the bound grows with sqrt(S) and 33 keys put it near the output's range (attnspec.tolerances);
# below 3 positions the output spans too little for the bound. Long rows come up more often than in
# LENGTHS: low-precision kernels change code paths there, and the range drawn is narrower anyway.
LOW_PRECISION_LENGTHS = st.one_of(*[st.integers(1, 5)] * 3, st.sampled_from([7, 16]))


# A strategy made anew for each draw is validated anew (about 0.1 ms): the draws below reuse one per argument.
BOOLEANS = st.booleans()
WINDOW_SIDE = st.one_of(st.none(), st.integers(0, 3))


@functools.lru_cache(maxsize=None)
def _integers(low: int, high: int):
    return st.integers(low, high)


def _sampled(options):
    """``st.sampled_from(options)``, made once for each distinct sequence of options (types included:
    ``(True,) == (1,)``, but a flag is not a head count)."""
    options = tuple(options)
    return _sampled_from(options, tuple(type(o) for o in options))


@functools.lru_cache(maxsize=None)
def _sampled_from(options: tuple, types: tuple):
    return st.sampled_from(options)


def _flag(draw, allowed: bool, want: bool | None, label: str) -> bool:
    """Draw a boolean feature: ``want`` forces it; ``allowed=False`` forbids it."""
    if want is not None:
        if want and not allowed:
            raise InvalidArgument(f"{label}=True is required, but the capabilities do not claim it")
        return want
    return draw(BOOLEANS, label=label) if allowed else False


def dtypes(caps: Capabilities, device: str = "cpu", *, low_precision: bool = True):
    """The dtypes both claimed and computable on ``device``, float64 first."""
    choices = [d for d in DTYPE_ORDER if d in caps.dtypes and d in DEVICE_DTYPES[device]
               and (low_precision or d in (torch.float64, torch.float32))]
    if not choices:
        raise InvalidArgument(f"capabilities.dtypes={caps.dtypes!r} has no dtype usable on device={device!r}")
    return _sampled(choices)


@st.composite
def problems(draw, caps: Capabilities, device: str = "cpu", *,
             self_attention: bool | None = None, batched: bool | None = None,
             layouts: tuple | None = None, min_batch: int = 1, min_heads: int = 1, min_length: int = 1,
             key_padding_mask: tuple | None = None, attn_mask: tuple | None = None,
             mask_3d: bool | None = None, require_mask: bool = False, causal: bool | None = None,
             fully_masked: bool | None = False, need_weights: bool | None = None,
             average_attn_weights: bool | None = None, extra_keys: bool | None = None,
             training: bool = False, dropout: bool = False, scale: float | None = None,
             low_precision: bool = True, dtype: torch.dtype | None = None,
             qdim: bool | None = None, permutes_keys: bool = False, require_padding: bool = False,
             is_causal: bool | None = None, positional: bool = True, window: bool | None = None,
             grouped: bool | None = None):
    """A :class:`Problem` the capabilities ``caps`` claim, under the given constraints.

    * ``self_attention``, ``batched``: force (True/False) or leave to the draw (None).
    * ``layouts``: restrict the input layouts drawn (within ``caps.layouts``).
    * ``key_padding_mask`` / ``attn_mask``: the mask kinds that may be drawn
      (default: all claimed); ``require_mask`` draws at least one mask, ``require_padding`` a
      key_padding_mask. Where S >= 2, every batch item then has a key masked for some query in
      every head (:func:`attnspec.inputs.masked_pattern`).
    * ``causal``: force a top-left causal attention mask (needs self-attention or L=S).
    * ``fully_masked``: mask every key of some rows on purpose (use with ``extra_keys=False``:
      the keys that add_bias_kv and add_zero_attn append are never masked); ``None``: draw it.
    * ``extra_keys``: force (or forbid) ``add_bias_kv``/``add_zero_attn``.
    * ``training`` with ``dropout``: train mode with a non-zero dropout.
    * ``min_length``: the shortest query and key lengths drawn.
    * ``qdim=False``: keep the query width at embed_dim (torch's API).
    * ``permutes_keys``: the law reorders keys, so trailing-only padding cannot be drawn.
    * ``scale``: input magnitude; ``"large"``: :data:`attnspec.tolerances.LARGE_SCALE` for the dtype;
      default: drawn from :data:`attnspec.tolerances.SCALES` for the dtype (mostly 1).
    * ``is_causal``: force the causal flag on (needs ``caps.causal`` "flag" or "always") or off (not
      "always"); None: on exactly when the module is always causal.
    * ``positional=False``: nothing hides keys by position (no causal flag, no window): for laws that
      reorder the sequence.
    * ``window``: force a sliding window (needs ``caps.window``) or none; None: drawn where claimed.
    * ``grouped``: force grouped-query attention (num_kv_heads a proper divisor of num_heads, which
      needs ``caps.num_kv_heads``) or ordinary heads; None: every divisor is drawn where claimed.
    Where keys are hidden by position, S >= L: every query then sees the key at its own position.
    With ``caps.rope``, the problem carries it and a drawn ``position_offset``; head widths rotate an
    even number of features.
    """
    if min_heads > 4 or min_batch > 3:
        raise InvalidArgument(f"min_heads={min_heads} (at most 4) / min_batch={min_batch} (at most 3)")
    max_heads = min(4, caps.max_heads or 4)
    if min_heads > max_heads:
        raise InvalidArgument(f"min_heads={min_heads}, but capabilities.max_heads={caps.max_heads}")
    min_heads = max(min_heads, caps.min_heads)
    if min_heads > max_heads:
        raise InvalidArgument(f"capabilities.min_heads={caps.min_heads} is above the {max_heads} heads drawn at most")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgument(f"dtype={dtype!r}, but should be a floating torch.dtype or None")
    if not (scale is None or scale == "large" or (isinstance(scale, (int, float)) and scale > 0)):
        raise InvalidArgument(f"scale={scale!r}, but should be a positive number, 'large' or None")
    dtype = dtype or draw(dtypes(caps, device, low_precision=low_precision), label="dtype")
    for name, value in (("is_causal", is_causal), ("window", window), ("grouped", grouped)):
        if value not in (None, True, False):
            raise InvalidArgument(f"{name}={value!r}, but should be True, False or None")
    if is_causal and not caps.causal_flag:
        raise InvalidArgument(f"is_causal=True, but capabilities.causal={caps.causal!r} takes no flag")
    if (is_causal is False or not positional) and caps.causal == "always":
        raise InvalidArgument("is_causal=False (or positional=False), but the module is always causal")
    if window and not (caps.window and positional):
        raise InvalidArgument("window=True, but a window is not claimed (or positional=False)")
    if grouped and not caps.num_kv_heads:
        raise InvalidArgument("grouped=True, but num_kv_heads is not claimed")
    flag = caps.causal == "always" if is_causal is None else is_causal
    if grouped:
        min_heads = max(min_heads, 2)
    if scale == "large":
        scale = tolerances.LARGE_SCALE[dtype]
    elif scale is None:
        scale = draw(_sampled(tolerances.SCALES[dtype]), label="scale")
    H = draw(_integers(min_heads, max_heads), label="num_heads")
    # in low precision a single feature per head is mostly its bias: its spread falls below the rounding of its
    # magnitude and comparisons cannot inform (attnspec.tolerances), so heads there are at least 3 wide
    low = dtype in tolerances.LOW_PRECISION
    if caps.rope is not None:  # heads that rotate an even number of features (at least 2), the smallest few
        fits = [d for d in range(caps.head_dim_multiple, 65, caps.head_dim_multiple)
                if caps.rope.fits(d) and not (low and d < 3)][:3]
        if not fits:
            raise InvalidArgument(f"no head_dim up to 64 rotates an even number of features with {caps.rope.short()}")
        hd = draw(_sampled(fits), label="head_dim")
    else:
        hd = caps.head_dim_multiple * draw(_integers(3 if low and caps.head_dim_multiple == 1 else 1, 4),
                                           label="head_dim")
    E = H * hd

    allowed_layouts = [lay for lay in caps.layouts if layouts is None or lay in layouts]
    if batched is True or min_batch > 1:
        allowed_layouts = [lay for lay in allowed_layouts if lay != "unbatched"]
    if batched is False:
        allowed_layouts = [lay for lay in allowed_layouts if lay == "unbatched"]
    if not allowed_layouts:
        raise InvalidArgument(f"no layout left: capabilities.layouts={caps.layouts}, layouts={layouts}, "
                              f"batched={batched}, min_batch={min_batch}")
    layout = draw(_sampled(sorted(allowed_layouts)), label="layout")
    batch = None if layout == "unbatched" else draw(_integers(min_batch, 3), label="batch")
    if layout == "unbatched":  # torch ignores batch_first for unbatched input: draw it anyway
        flags = sorted({lay == "batch_first" for lay in caps.layouts if lay != "unbatched"} or {False})
        batch_first = draw(_sampled(flags), label="batch_first")
    else:
        batch_first = layout == "batch_first"

    if self_attention is False and not caps.cross_attention:
        raise InvalidArgument("self_attention=False is required, but cross-attention is not claimed")
    if self_attention is None:
        self_attn = draw(BOOLEANS, label="self_attention") if caps.cross_attention else True
    else:
        self_attn = self_attention
    lengths = LOW_PRECISION_LENGTHS if low else LENGTHS
    if low:  # a handful of outputs spans too little for a bound of a few bfloat16 ulps to inform
        min_length = max(min_length, 3)
    L = max(min_length, draw(lengths, label="L"))
    S = L if self_attn or causal else max(min_length, draw(lengths, label="S"))
    kv_heads = None
    if caps.num_kv_heads and grouped is not False:
        divisors = [d for d in range(H, 0, -1) if H % d == 0 and not (grouped and d == H)]
        kv_heads = draw(_sampled(divisors), label="num_kv_heads")
    win = None
    if caps.window and positional and window is not False:
        if window or draw(BOOLEANS, label="window"):
            side = WINDOW_SIDE
            if caps.window == "left":  # a look-back window: bounded on the left only
                win = (draw(_integers(0, 3), label="window left"), None)
            elif caps.window == "symmetric":
                width = draw(_integers(0, 3), label="window width")
                win = (width, width)
            else:
                win = (draw(side, label="window left"), draw(side, label="window right"))
                if win == (None, None):
                    win = (draw(_integers(0, 3), label="window left"), None)
    if flag or win is not None:  # every query sees the key at its own (aligned) position
        S = max(S, L)

    cross_dims = not self_attn and caps.kdim_vdim
    kdim = draw(_sampled([None, E + 1, 2]), label="kdim") if cross_dims else None
    if not self_attn and caps.key_is_value:  # one tensor is key and value: of width kdim
        vdim = kdim
    else:
        vdim = draw(_sampled([None, E + 2, 3]), label="vdim") if cross_dims else None
    q_width = draw(_sampled([None, E + 3]), label="qdim") if caps.qdim and qdim is not False else None
    if self_attn and q_width is not None:  # one tensor is query, key and value: all of width qdim
        kdim = vdim = q_width if caps.kdim_vdim else None
        q_width = q_width if caps.kdim_vdim else None
    extra_allowed = extra_keys is not False and caps.rope is None  # appended keys have no position
    config = Config(
        embed_dim=E, num_heads=H,
        bias=draw(_sampled(sorted(caps.bias, reverse=True)), label="bias"),
        kdim=kdim, vdim=vdim, qdim=q_width,
        add_bias_kv=_flag(draw, caps.add_bias_kv and extra_allowed, None, "add_bias_kv"),
        add_zero_attn=_flag(draw, caps.add_zero_attn and extra_allowed, None, "add_zero_attn"),
        dropout=0.5 if dropout else 0.0,
        batch_first=batch_first, num_kv_heads=kv_heads, window=win)
    if extra_keys and not (config.add_bias_kv or config.add_zero_attn):
        if caps.rope is not None:
            raise InvalidArgument("extra_keys=True, but with RoPE appended keys have no position (not drawn)")
        if not (caps.add_bias_kv or caps.add_zero_attn):
            raise InvalidArgument("extra_keys=True, but neither add_bias_kv nor add_zero_attn is claimed")
        config = Config(**{**vars(config), "add_bias_kv" if caps.add_bias_kv else "add_zero_attn": True})

    kpm_kinds = [k for k in caps.key_padding_mask if key_padding_mask is None or k in key_padding_mask]
    am_allowed = caps.attn_mask
    if flag:  # only the masks the module takes alongside its causality
        kpm_kinds = [k for k in kpm_kinds if k in caps.masks_with_causality("key_padding_mask")]
        am_allowed = caps.masks_with_causality("attn_mask")
    if fully_masked is None:  # draw it, where a mask can be drawn at all
        fully_masked = caps.any_mask and draw(BOOLEANS, label="fully_masked")
    if permutes_keys and caps.padding_suffix_only:
        kpm_kinds = []
    am_kinds = [k for k in am_allowed if attn_mask is None or k in attn_mask]
    if causal and not am_kinds:
        raise InvalidArgument("causal=True, but no attn_mask kind is claimed")
    if (require_mask or fully_masked) and not (kpm_kinds or am_kinds):
        raise InvalidArgument("a mask is required, but no mask kind is claimed")
    require_mask = require_mask or require_padding
    if require_padding and not kpm_kinds:
        raise InvalidArgument("a key_padding_mask is required, but no key_padding_mask kind is claimed")
    options = [(k, None) for k in kpm_kinds] + [(None, a) for a in am_kinds] + \
        [(k, a) for k in kpm_kinds for a in am_kinds]
    if require_padding:
        options = [(k, a) for k, a in options if k is not None]
    if causal or mask_3d:
        options = [(k, a) for k, a in options if a is not None]
    if not (require_mask or fully_masked or causal):
        options = [(None, None)] + options
    kpm, am = draw(_sampled(options), label="masks") if options else (None, None)
    allow_3d = am is not None and caps.attn_mask_3d and mask_3d is not False
    is_3d = mask_3d if (mask_3d and am) else (draw(BOOLEANS, label="mask_3d") if allow_3d else False)
    if mask_3d and not (am and caps.attn_mask_3d):
        raise InvalidArgument("mask_3d=True, but no 3-D attn_mask is claimed")
    causal_mask = bool(causal) if causal is not None else (
        am is not None and L == S and not flag and draw(_integers(0, 3), label="causal") == 0)

    modes = []
    if fully_masked:
        modes = (["batch"] if kpm else []) + (["row"] if am and not causal_mask else []) + \
                (["head"] if am and is_3d and not causal_mask else [])
        if not modes:
            modes = ["batch"] if kpm else []
        if not modes:
            kpm = draw(_sampled(kpm_kinds), label="key_padding_mask") if kpm_kinds else None
            if kpm is None:
                causal_mask, modes = False, ["row"]
            else:
                modes = ["batch"]

    want_weights = _flag(draw, caps.need_weights, need_weights, "need_weights")
    avg = True
    if want_weights:
        avg = not _flag(draw, caps.per_head_weights,
                        None if average_attn_weights is None else not average_attn_weights,
                        "per_head_weights")
    return Problem(
        config=config, batch=batch, L=L, S=S,
        dtype=dtype,
        self_attention=self_attn, key_is_value=not self_attn and caps.key_is_value, key_padding_mask=kpm, suffix_padding=caps.padding_suffix_only,
        attn_mask=am, mask_3d=bool(is_3d and am), causal=causal_mask,
        fully_masked=draw(_sampled(modes), label="fully_masked") if modes else None,
        need_weights=want_weights, average_attn_weights=avg,
        training=training, scale=float(scale), is_causal=flag, alignment=caps.causal_alignment,
        rope=caps.rope, position_offset=draw(_sampled([0, 0, 1, 5, 37]), label="position_offset")
        if caps.rope is not None else 0,
        seed=draw(_integers(0, 2**31 - 1), label="seed"))
