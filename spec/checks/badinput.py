"""Bad input: an invalid configuration or call raises a clear error instead of answering.

Each law first makes the same call with valid input: a module that crashes on every call
rejects nothing in particular, and is reported as crashing on valid input too.
"""
import torch

from ..config import Config
from ..errors import Mismatch
from ..masks import MaskError
from ..requirements import (DISTINCT_KEY_VALUE, EMBED_DIM_AND_HEADS, SEVERAL_HEADS, VALIDATES_MASK_DTYPES,
                            VALIDATES_MASK_SHAPES, VALIDATION)
from .registry import law


def _answers_valid_input(case, fn, what: str):
    try:
        fn()
    except Mismatch as m:
        raise Mismatch(f"{what} with valid input crashes too ({m.detail}): its error on bad input shows nothing "
                       "about checking it") from None


def _must_raise(case, fn, what: str, why: str):
    case.compared = True  # a module that answers fails here
    try:
        fn()
    except MaskError as exc:  # raised by the adapter's conversion, before the module saw the mask
        raise Mismatch(f"{what} was rejected by attnspec's own mask helper (attnspec.masks.MaskError: {exc}), not by "
                       "the module; if the module never sees the masks given to call, declare "
                       "validates_mask_shapes=False and validates_mask_dtypes=False") from None
    except Exception as exc:  # any error of the module's, as long as it says something
        if not str(exc).strip():
            raise Mismatch(f"{what} raised {type(exc).__name__} with an empty message, but should say "
                           f"what is wrong ({why})") from None
        return
    raise Mismatch(f"{what} returned normally, but should raise an error: {why}")


@law("bad-input", SEVERAL_HEADS, EMBED_DIM_AND_HEADS, VALIDATION, severity="validation")
def rejects_indivisible_embed_dim(case):
    """Constructing with embed_dim not divisible by num_heads raises a clear error."""
    H = case.problem.config.num_heads
    _answers_valid_input(case, case.build, f"build(embed_dim={case.problem.config.embed_dim}, num_heads={H})")
    bad = Config(embed_dim=H * case.problem.config.head_dim + 1, num_heads=H)
    _must_raise(case, lambda: case.adapter.build(bad, dtype=case.problem.dtype, device=case.device),
                f"build(embed_dim={bad.embed_dim}, num_heads={H})",
                f"embed_dim={bad.embed_dim} is not divisible by num_heads={H}")


def _call_raw(case, module, inputs):
    """The adapter's call, unguarded, with the problem's flags."""
    return case.adapter.call(module, inputs.query, inputs.key, inputs.value, **inputs.kwargs(),
                             need_weights=case.problem.need_weights)


@law("bad-input", VALIDATES_MASK_SHAPES, VALIDATION, severity="validation")
def rejects_wrong_mask_shape(case):
    """A key_padding_mask or attn_mask of the wrong shape raises a clear error."""
    module = case.build()
    inputs = case.inputs()
    _answers_valid_input(case, lambda: case.call(module, inputs), "the same call")
    if inputs.key_padding_mask is not None:
        m = inputs.key_padding_mask
        bad = inputs.replace(key_padding_mask=torch.cat([m, m[..., :1]], dim=-1))  # one key too many
        what = f"key_padding_mask of shape {tuple(bad.key_padding_mask.shape)}"
    else:
        m = inputs.attn_mask
        bad = inputs.replace(attn_mask=torch.cat([m, m[..., :1, :]], dim=-2))  # one query row too many
        what = f"attn_mask of shape {tuple(bad.attn_mask.shape)}"
    _must_raise(case, lambda: _call_raw(case, module, bad), f"call with a {what}",
                f"L={case.problem.L}, S={case.problem.S}")


@law("bad-input", VALIDATES_MASK_DTYPES, VALIDATION, severity="validation")
def rejects_wrong_mask_dtype(case):
    """An integer mask raises a clear error (only bool and floating masks are defined)."""
    module = case.build()
    inputs = case.inputs()
    _answers_valid_input(case, lambda: case.call(module, inputs), "the same call")
    name = "key_padding_mask" if inputs.key_padding_mask is not None else "attn_mask"
    m = getattr(inputs, name)
    as_int = (m if m.dtype == torch.bool else torch.isneginf(m)).to(torch.int64)
    bad = inputs.replace(**{name: as_int})
    _must_raise(case, lambda: _call_raw(case, module, bad), f"call with an int64 {name}",
                "integer masks have no defined meaning")


@law("bad-input", DISTINCT_KEY_VALUE, VALIDATION, severity="validation")
def rejects_mismatched_key_value(case):
    """Keys and values of different lengths raise a clear error."""
    p = case.problem
    module = case.build()
    inputs = case.inputs()
    _answers_valid_input(case, lambda: case.call(module, inputs), "the same call")
    ax = 1 if p.layout == "batch_first" else 0
    longer = torch.cat([inputs.value, inputs.value.narrow(ax, 0, 1)], dim=ax)  # S + 1 values
    _must_raise(case, lambda: case.adapter.call(module, inputs.query, inputs.key, longer,
                                                need_weights=p.need_weights),
                f"call with {p.S} keys and {p.S + 1} values", "every key needs exactly one value")
