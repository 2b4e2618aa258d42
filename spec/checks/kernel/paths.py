"""Layouts and strides: every view of the same values gives the contiguous call's result, or a clear refusal."""
import torch

from ...errors import Mismatch
from ..registry import law


def _transposed(t):
    return t.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, H, D) values, stored as (B, H, L, D)


def _sliced_heads(t):
    B, L, H, D = t.shape
    wider = torch.cat([t.new_full((B, L, 1, D), float("nan")), t], dim=2)  # (B, L, H + 1, D), NaN in head 0
    return wider[:, :, 1:]  # (B, L, H, D): a view that skips a head


def _offset(t):
    n = t.numel()
    storage = torch.cat([t.new_full((3,), float("nan")), t.reshape(-1)])  # (3 + n,)
    return storage[3:3 + n].view(t.shape)  # the same values, at storage offset 3


def _inner_stride(t):
    doubled = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)  # (B, L, H, D, 2)
    return doubled[..., 0]  # (B, L, H, D) with stride 2 in D


def _expanded(t):
    return t[:, :, :1].expand(t.shape)  # (B, L, H, D): one head, stride 0 across heads


# name -> (how each of q, k, v is laid out, the strides claim under which it must be accepted)
LAYOUTS = {
    "transposed views (stored (B, H, L, D))": (_transposed, "unit-last-dim"),
    "heads sliced from a wider tensor": (_sliced_heads, "unit-last-dim"),
    "a storage offset": (_offset, "contiguous"),
    "k and v expanded from one head (stride 0)": (_expanded, "unit-last-dim"),
    "a last dimension of stride 2": (_inner_stride, "any"),
}
ORDER = ("contiguous", "unit-last-dim", "any")


@law("paths", contract="kernel")
def strided_inputs_equal_contiguous(case):
    """Transposed views, sliced heads, offsets, stride-0 kv, a strided last dim give the reference output (or, beyond the declared strides, an error)."""
    caps = case.adapter.capabilities
    x = case.inputs()
    for name, (layout, needs) in LAYOUTS.items():
        expanded = name.startswith("k and v expanded")
        values = x.replace(k=layout(x.k), v=layout(x.v)) if expanded else \
            x.replace(q=layout(x.q), k=layout(x.k), v=layout(x.v))
        plain = values.replace(k=values.k.contiguous(), v=values.v.contiguous())
        accepted = ORDER.index(caps.strides) >= ORDER.index(needs)
        try:
            out, _ = case.call(values)
        except Mismatch as m:
            if accepted or not m.detail.startswith("attn("):
                raise Mismatch(f"with {name}: {m.detail}" + (f" (strides={caps.strides!r} is claimed)" if accepted
                                                              else "")) from None
            continue  # refused, as its declared strides allow
        case.assert_output(out, case.expected(plain), "output", f"the reference (inputs as {name})")
