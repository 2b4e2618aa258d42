"""Bad input: shapes that do not fit, inputs outside the declaration, cu_seqlens, block tables and cache lengths that do
not fit their tensors: each raises an error, never a result."""
import torch

from ...kernel.declaration import DEFAULT_DTYPES
from ...kernel.problem import make_inputs
from ...kernel.requirements import CACHE_STEP, NARROWED, VARLEN
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


def must_refuse(case, what: str, call) -> None:
    """``call()`` (the kernel on bad input) must raise; a result is a failure naming ``what``."""
    try:
        call()
    except Exception:  # any error will do: the kernel refused
        case.compared = True
        return
    case.fail(f"the kernel returned a result for {what}, but should raise an error (a silent result is a wrong one; "
              "a real kernel reads out of bounds)")


def bad_cu_seqlens(p) -> list:
    """``(what, name, values)``: cu_seqlens that no call may take, each from the problem's own."""
    Tq, Tk = p.cu_q[-1] + p.tail_q, p.cu_k[-1] + p.tail_k
    out = [(f"cu_seqlens_q starting at 1: {[1, *p.cu_q[1:]]}", "q", [1, *p.cu_q[1:]]),
           (f"cu_seqlens_k ending past the {Tk} rows of k: {[*p.cu_k[:-1], Tk + 1]}", "k", [*p.cu_k[:-1], Tk + 1]),
           (f"cu_seqlens_q ending past the {Tq} rows of q: {[*p.cu_q[:-1], Tq + 1]}", "q", [*p.cu_q[:-1], Tq + 1])]
    if p.B >= 2:
        down = [*p.cu_k[:1], p.cu_k[2] + 1, *p.cu_k[2:]]  # segment 0 ends after segment 1 does: decreasing
        out.append((f"decreasing cu_seqlens_k: {down}", "k", down))
    else:
        out.append((f"decreasing cu_seqlens_k: {[0, -1]}", "k", [0, -1]))
    return out


@law("bad-input", VARLEN, severity="validation", contract="kernel")
def rejects_inconsistent_varlen(case):
    """cu_seqlens not starting at 0, decreasing or past their tensor, or of two lengths; seqused_k past its segment: each raises an error.

    Where ``rows_past_cu_seqlens='refused'`` is declared, rows past cu_seqlens[-1] must raise too."""
    p, caps = case.problem, case.adapter.capabilities
    x = case.inputs(p.replace(tail_q=0, tail_k=0))
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=case.device)  # noqa: E731
    kwargs = {**p.options(), **({} if x.alibi_slopes is None else {"alibi_slopes": x.alibi_slopes})}

    def call(xi, max_q=p.max_seqlen_q, max_k=p.max_seqlen_k, **extra):
        return lambda: case.adapter.attend_varlen(xi.q, xi.k, xi.v, xi.cu_seqlens_q, xi.cu_seqlens_k, max_q, max_k,
                                                  **{**kwargs, **extra})

    for what, which, values in bad_cu_seqlens(p.replace(tail_q=0, tail_k=0)):
        bad = x.replace(**{f"cu_seqlens_{which}": ints(values)})
        must_refuse(case, what, call(bad, max_q=max(p.max_seqlen_q, 2 + Tmax(values)),
                                     max_k=max(p.max_seqlen_k, 2 + Tmax(values))))
    longer = x.replace(cu_seqlens_k=ints([*p.cu_k, p.cu_k[-1]]))
    must_refuse(case, f"cu_seqlens_k of {p.B + 2} entries beside cu_seqlens_q of {p.B + 1}", call(longer))
    if caps.seqused_k:
        used = [n + 1 if b == 0 else n for b, n in enumerate(p.seqlens_k)]
        must_refuse(case, f"seqused_k={used} past its segments' keys {list(p.seqlens_k)}",
                    call(x, seqused_k=ints(used)))
    if caps.rows_past_cu_seqlens == "refused":
        tail = x.replace(k=torch.cat([x.k, x.k[:1]]), v=torch.cat([x.v, x.v[:1]]))
        must_refuse(case, "a row of k past cu_seqlens_k[-1] (rows_past_cu_seqlens='refused')", call(tail))


def Tmax(values) -> int:
    return max(b - a for a, b in zip(values[:-1], values[1:])) if len(values) > 1 else 0


@law("bad-input", CACHE_STEP, severity="validation", contract="kernel")
def rejects_inconsistent_cache(case):
    """cache_seqlens + Ln past the rows allocated, a block table entry outside the pool, cache_batch_idx outside the cache, k without v: each raises."""
    p, caps = case.problem, case.adapter.capabilities
    x = case.inputs()
    kwargs = {**p.options(), **({} if x.alibi_slopes is None else {"alibi_slopes": x.alibi_slopes})}
    for name in ("k", "v", "cache_batch_idx", "block_table", "rotary_cos", "rotary_sin"):
        if getattr(x, name) is not None:
            kwargs[name] = getattr(x, name)
    if x.rotary_cos is not None:
        kwargs["rotary_interleaved"] = p.rotary == "interleaved"

    def call(**extra):
        xi = x.cloned()
        return lambda: case.adapter.attend_cache(xi.q, xi.k_cache, xi.v_cache,
                                                 **{"cache_seqlens": xi.cache_seqlens, **kwargs, **extra})

    capacity = x.block_table.shape[1] * x.k_cache.shape[1] if x.block_table is not None else x.k_cache.shape[1]
    over = x.cache_seqlens.clone()
    over[0] = capacity - p.Ln + 1  # one row past the allocation once the new rows are written
    must_refuse(case, f"cache_seqlens={over.tolist()} with {p.Ln} new rows past the {capacity} rows allocated "
                      + ("(max_pages x page_size)" if x.block_table is not None else "(S)"), call(cache_seqlens=over))
    holding = [b for b, n in enumerate(p.cache_seqlens) if n + p.Ln]  # items whose first page is read
    if x.block_table is not None and holding:
        table = x.block_table.clone()
        table[holding[0], 0] = x.k_cache.shape[0]  # one past the last page of the pool
        must_refuse(case, f"block_table[{holding[0]}, 0] = {x.k_cache.shape[0]}, past the pool's {x.k_cache.shape[0]} "
                          "pages", call(block_table=table))
    if x.cache_batch_idx is not None or (caps.cache_batch_idx and x.block_table is None):
        idx = torch.arange(p.B, dtype=torch.int32, device=case.device) if x.cache_batch_idx is None else \
            x.cache_batch_idx.clone()
        idx[0] = x.k_cache.shape[0]
        must_refuse(case, f"cache_batch_idx={idx.tolist()}, past the cache's {x.k_cache.shape[0]} items",
                    call(cache_batch_idx=idx))
    if x.k is not None:
        must_refuse(case, "k (new rows) without v", call(v=None))
