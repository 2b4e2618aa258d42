"""Bad input: shapes that do not fit and inputs outside the declaration raise an error, never a result."""
import torch

from ...kernel.declaration import DEFAULT_DTYPES
from ...kernel.problem import make_inputs
from ...kernel.requirements import NARROWED
from ..registry import law


def must_raise(case, what: str, x, p, **options):
    """Call the kernel on ``x`` (the problem ``p``); a result instead of an exception is a failure naming ``what``."""
    kwargs = {**p.options(), **options}
    if x.alibi_slopes is not None:
        kwargs.setdefault("alibi_slopes", x.alibi_slopes)
    try:
        case.adapter.attend(x.q, x.k, x.v, **kwargs)
    except Exception:  # any error will do: the kernel refused
        case.compared = True
        return
    case.fail(f"attn returned a result for {what}, but should raise an error (a silent result is a wrong one)")


@law("bad-input", severity="validation", contract="kernel")
def rejects_inconsistent_shapes(case):
    """Shapes that do not fit (q, k, v disagreeing in length, batch, width or heads; Hq not a multiple of Hkv; ALiBi slopes of another shape) raise an error."""
    p, caps = case.problem, case.adapter.capabilities
    x = case.inputs()
    must_raise(case, f"v with {p.Lk + 1} keys beside k with {p.Lk}", x.replace(v=torch.cat([x.v, x.v[:, :1]], 1)), p)
    must_raise(case, f"k of width {p.D + 1} beside q of width {p.D}", x.replace(k=torch.cat([x.k, x.k[..., :1]], -1)), p)
    must_raise(case, f"k and v with {p.B + 1} batch items beside q with {p.B}",
               x.replace(k=torch.cat([x.k, x.k[:1]]), v=torch.cat([x.v, x.v[:1]])), p)
    odd = p.Hq + 1  # never divides Hq
    must_raise(case, f"Hq={p.Hq} query heads over Hkv={odd} kv heads",
               x.replace(k=x.k[:, :, :1].expand(-1, -1, odd, -1).contiguous(),
                         v=x.v[:, :, :1].expand(-1, -1, odd, -1).contiguous()), p)
    if caps.alibi:
        must_raise(case, f"alibi_slopes of shape ({p.Hq + 1},) for Hq={p.Hq}", x, p,
                   alibi_slopes=torch.ones(p.Hq + 1, device=x.q.device))
    if case.device != "cpu":
        must_raise(case, "k and v on the CPU beside q on the GPU", x.replace(k=x.k.cpu(), v=x.v.cpu()), p)


def undeclared(p, caps) -> list:
    """``(what, problem)`` for each kind of input the declaration leaves out (one of each)."""
    out = [(f"dtype {str(d).removeprefix('torch.')} (not declared)", p.replace(dtype=d))
           for d in DEFAULT_DTYPES if d not in caps.dtypes][:1]
    if caps.head_dims is not None:
        width = next(d for d in range(1, 1024) if d not in caps.head_dims)
        out.append((f"head width D={width} (not in head_dims)", p.replace(D=width, Dv=None)))
    if caps.max_seqlen_q is not None:
        out.append((f"Lq={caps.max_seqlen_q + 1} (beyond max_seqlen_q)", p.replace(Lq=caps.max_seqlen_q + 1)))
    if caps.max_seqlen_k is not None:
        out.append((f"Lk={caps.max_seqlen_k + 1} (beyond max_seqlen_k)", p.replace(Lk=caps.max_seqlen_k + 1)))
    if not caps.grouped_kv:
        out.append(("Hkv=1 under Hq=2 (grouped_kv=False)", p.replace(Hq=2, Hkv=1, alibi=None)))
    if not caps.distinct_value_dim:
        out.append((f"Dv={p.D + 1} beside D={p.D} (distinct_value_dim=False)", p.replace(Dv=p.D + 1)))
    if not caps.longer_queries:
        out.append((f"Lq={p.Lk + 1} > Lk={p.Lk} (longer_queries=False)", p.replace(Lq=p.Lk + 1)))
    return out


@law("bad-input", NARROWED, severity="validation", contract="kernel")
def rejects_undeclared_inputs(case):
    """An input outside the declaration (an undeclared dtype, head width or length; grouped heads, Dv != D or Lq > Lk where not claimed) raises an error."""
    caps = case.adapter.capabilities
    for what, q in undeclared(case.problem, caps):
        must_raise(case, what, make_inputs(q, case.device), q)
