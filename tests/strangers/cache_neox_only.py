"""Buggy twin: the rotation always pairs feature i with i + r/2, whatever rotary_interleaved says."""
import cache_gather
from cache_gather import attn_with_kvcache as _step

_rotate = cache_gather._rotate


def attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, cache_batch_idx=None, block_table=None,
                      rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False, softmax_scale=None,
                      window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0, return_lse=False):
    return _step(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, cache_batch_idx=cache_batch_idx,
                 block_table=block_table, rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_interleaved=False,
                 causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                 alibi_slopes=alibi_slopes, return_lse=return_lse)
