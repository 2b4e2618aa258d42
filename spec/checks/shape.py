"""Shape, dtype and device of outputs and weights, for every layout."""
from ..errors import Mismatch
from ..inputs import layout_shape
from . import law


def _same_kind(case, t, what):
    p = case.problem
    if t.dtype != p.dtype:
        raise Mismatch(f"{what}.dtype = {t.dtype}, but should be {p.dtype} like the query")
    if t.device.type != case.device:
        raise Mismatch(f"{what}.device = {t.device}, but should be {case.device} like the query")


@law("shape")
def output_shapes(case):
    """The output has the query's layout, dtype and device; weights are batch-first (N, [H,] L, S'), or None if not asked for."""
    p = case.problem
    c = p.config
    _, _, out, w = case.run()
    case.assert_shape(out, layout_shape(p, p.L, c.embed_dim), "output")
    _same_kind(case, out, "output")
    if not p.need_weights:
        if w is not None:
            raise Mismatch(f"weights.shape = {tuple(w.shape)}, but should be None (need_weights=False)")
        return
    heads = () if p.average_attn_weights else (c.num_heads,)
    batch = (p.B,) if p.batched else ()
    case.assert_shape(w, batch + heads + (p.L, p.S + c.extra_keys), "weights")
    _same_kind(case, w, "weights")
