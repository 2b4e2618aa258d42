"""What the kernel laws require: :class:`attnspec.requirements.Requirement` objects over
:class:`~attnspec.kernel.declaration.KernelCapabilities`, decided by :func:`attnspec.requirements.decide`
like the module contract's, their draws narrowing a :class:`~attnspec.kernel.scope.KernelScope`."""
from __future__ import annotations

from ..requirements import Requirement
from .declaration import DEFAULT_DTYPES, DEVICE_DTYPES, ROTARY_PAIRINGS

LSE = Requirement("the LSE (return_lse)", lambda c: c.lse, draw={"lse": True}, feature=True)
BACKWARD = Requirement("gradients (backward)", lambda c: c.backward, feature=True)
DETERMINISTIC_BACKWARD = Requirement("a deterministic backward", lambda c: c.backward and c.deterministic_backward)
CAUSAL_UNEQUAL = Requirement("the causal option", lambda c: c.causal,
                             draw={"causal": True, "unequal": True, "window": False, "min_length": 2}, feature=True)
WINDOW = Requirement("a sliding window (window_size)", lambda c: c.window, draw={"window": True}, feature=True)
SOFTCAP = Requirement("softcap", lambda c: c.softcap, draw={"softcap": True}, feature=True)
ALIBI = Requirement("ALiBi (alibi_slopes)", lambda c: c.alibi, draw={"alibi": ("heads", "batch")}, feature=True)
# A key hidden from some query that sees others: by the causal option or a window.
HIDES_KEYS = Requirement("the causal option or a window", lambda c: c.causal or c.window, draw={"min_length": 2})
# Rows that see no key arise with Lq > Lk: bottom-right causal hides every key from the first Lq - Lk
# queries; a window can leave a query's range of keys empty in either alignment.
ZERO_EMPTY_ROWS = Requirement(
    "fully masked rows (fully_masked_rows='zeros', Lq > Lk, and bottom-right causal or a window)",
    lambda c: c.fully_masked_rows == "zeros" and c.longer_queries
    and (c.window or (c.causal and c.causal_alignment == "bottom-right")),
    draw={"empty_rows": True}, feature=True)
ZERO_LENGTH_KEYS = Requirement("rows with no key (fully_masked_rows='zeros')", lambda c: c.fully_masked_rows == "zeros")
NO_SOFTCAP = Requirement("", draw={"softcap": False})
SEVERAL_ITEMS = Requirement("", draw={"min_batch": 2})
SEVERAL_HEADS = Requirement("", draw={"min_heads": 2})
GROUPED = Requirement("grouped-query heads (Hkv < Hq)", lambda c: c.grouped_kv, draw={"grouped": True}, feature=True)
AN_OPTION = Requirement("an option (causal, softmax_scale, window_size, softcap or alibi_slopes)",
                        lambda c: c.causal or c.softmax_scale or c.window or c.softcap or c.alibi)


def _narrowed(c) -> bool:
    return (set(c.dtypes) != set(DEVICE_DTYPES["cpu"]) and set(c.dtypes) != set(DEFAULT_DTYPES)) \
        or c.head_dims is not None or c.max_seqlen_q is not None or c.max_seqlen_k is not None \
        or not c.grouped_kv or not c.distinct_value_dim or not c.longer_queries


NARROWED = Requirement("a declaration that narrows dtypes, head widths, lengths or heads", _narrowed)

# -- the varlen and cache-step entry points (docs/kernels_varlen.md) ----------------------------------------
VARLEN = Requirement("the varlen entry point (cu_seqlens_q, cu_seqlens_k)", lambda c: c.entry == "varlen",
                     draw={"form": "varlen"}, feature=True)
CACHE_STEP = Requirement("the cache step (k_cache, v_cache, cache_seqlens)", lambda c: c.entry == "kvcache",
                         draw={"form": "kvcache"}, feature=True)
PACKED = Requirement("a varlen or cache-step entry point", lambda c: c.entry != "dense", draw={"form": "native"})
NATIVE = Requirement("", draw={"form": "native"})  # the kernel's own entry point, whichever it is
SEVERAL_SEGMENTS = Requirement("", draw={"min_batch": 2})
SEQUSED = Requirement("seqused_k", lambda c: c.seqused_k, draw={"seqused": True}, feature=True)
UNREAD = Requirement("memory the call must not read (rows past cu_seqlens[-1] (rows_past_cu_seqlens='ignored') or "
                     "seqused_k, for a varlen kernel)", draw={"unread": True})
TAILS_REFUSED = Requirement("rows_past_cu_seqlens='refused'", lambda c: c.rows_past_cu_seqlens == "refused")
VARLEN_BACKWARD = Requirement("gradients (backward)", lambda c: c.backward, feature=True)
NEW_ROWS = Requirement("new rows (k and v)", lambda c: c.new_kv, draw={"new_rows": True}, feature=True)
PAGED = Requirement("a paged cache (block_table)", lambda c: c.paged, draw={"paged": True}, feature=True)
PAGED_AND_CONTIGUOUS = Requirement("a paged and a contiguous cache", lambda c: c.paged and c.contiguous_cache,
                                   draw={"paged": True}, feature=True)
ROTARY = Requirement("rotary_cos and rotary_sin", lambda c: c.rotary, draw={"rotary": ROTARY_PAIRINGS}, feature=True)
CAUSAL = Requirement("the causal option", lambda c: c.causal, draw={"causal": True}, feature=True)
# keys that can be split in two: no position enters a score, and a dense call has two keys at least
NO_POSITIONS = Requirement("", draw={"causal": False, "window": False, "alibi": None, "rotary": None,
                                     "new_rows": False, "min_length": 2})
