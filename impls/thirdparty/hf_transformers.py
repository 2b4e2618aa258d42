"""Attention layers of Hugging Face ``transformers`` (certified with 5.23.0), with eager attention.

* ``BartAttention`` (``transformers.models.bart``): the encoder/decoder attention that
  BART, mBART, Marian, Pegasus, Whisper and many more copy: separate ``q_proj``,
  ``k_proj``, ``v_proj``, ``out_proj`` (with or without bias), logits
  ``(q @ k^T) * head_dim**-0.5`` plus an additive mask, softmax, dropout on the weights
  in training, ``out_proj``. Its cross-attention takes *one* ``key_value_states``
  tensor for both keys and values: it declares ``shared_key_value``.
* ``Sam3Attention`` (``transformers.models.sam3``): SAM 3's DETR-decoder attention,
  ``forward(query, key, value, attention_mask)`` with distinct query, key and value
  tensors: a full cross-attention, with biases, without dropout.

Both run ``eager_attention_forward`` (``attn_implementation="eager"``), which returns the
per-head weights (B, H, L, S) after dropout. Masks: HF layers take one additive float
mask that broadcasts to (B, H, L, S). The adapter builds it with :func:`attnspec.masks.combined`
as HF's own mask utilities do (``transformers.masking_utils.eager_mask``): a bool mask
(``True`` = masked, the polarity of ``nn.MultiheadAttention``) becomes ``torch.finfo(dtype).min``
where masked and 0 elsewhere; a float mask is added as it is (so its ``-inf`` stay ``-inf``). A key
padding mask (B, S) becomes (B, 1, 1, S); a 3-D ``attn_mask`` (B*H, L, S), row
``b*H + h``, becomes (B, H, L, S). Weights map with :func:`attnspec.from_linears`.
"""
from __future__ import annotations

import torch
from transformers import BartConfig
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.sam3.configuration_sam3 import Sam3DETRDecoderConfig
from transformers.models.sam3.modeling_sam3 import Sam3Attention

from attnspec import from_linears, masks, to_linears
from attnspec.adapter import Adapter
from attnspec.capabilities import Capabilities
from attnspec.config import Rope
from attnspec.weights import CanonicalWeights

from ._common import check_config, check_mask_dtypes, keys_are_values, returned_weights


def hf_additive_mask(key_padding_mask, attn_mask, *, batch: int, num_heads: int, dtype, queries=None, keys=None,
                     positions=None):
    """nn.MultiheadAttention's masks as the one additive float mask an HF eager layer adds to its logits.

    :func:`attnspec.masks.combined` with HF's fill: the bool masks (and the keys ``positions`` hides) are
    merged, then ``finfo(dtype).min`` where masked and 0 elsewhere, as ``transformers.masking_utils.eager_mask``
    does; float masks are added unchanged. ``queries``/``keys`` None: the sizes are left unchecked, so that
    a mask of the wrong size reaches the layer, which must reject it (BartAttention and Sam3Attention claim
    so). Returns None without masks.
    """
    return masks.combined(key_padding_mask, attn_mask, batch=batch, num_heads=num_heads, queries=queries, keys=keys,
                          dtype=dtype, positions=positions, fill=torch.finfo(dtype).min)  # (B|1, H|1, L|1, S)


def _linears(module, out_name: str):
    """The q, k, v and output projections (nn.Linear, with or without bias) as from_linears takes them."""
    return module.q_proj, module.k_proj, module.v_proj, getattr(module, out_name)


FULLY_MASKED = (
    "HF fills masked logits with finfo(dtype).min, not -inf: a row whose keys are all masked by a bool "
    "mask gets uniform weights 1/S over the masked keys, so its output is the mean of the values "
    "projected by out_proj, not out_proj.bias; with a float -inf mask the row is NaN (and so it is with a bool "
    "mask in float64 where the softmax runs in float32: finfo(float64).min becomes -inf there)")
CONTAMINATION = (
    "a fully masked row of a float mask (-inf, added unchanged) softmaxes to NaN, and its NaN reaches "
    "every weight's gradient through the backward pass of the softmax, also from a loss on the other rows "
    "(the same as torch's slow path, pytorch#41508); HF's own finfo.min masks avoid it")


FULLY_MASKED_DEVIATIONS = [
    # bool masks: uniform weights over the masked keys (a finite wrong value); float -inf masks: NaN
    dict(law="fully_masked_rows_follow_policy", when={"fully_masked": True}, reason=FULLY_MASKED),
    dict(law="fully_masked_rows_do_not_contaminate", when={"fully_masked": True}, match=r"= nan, but should be",
         reason=CONTAMINATION),
]


# Seen on an H200 with torch 2.11.0+cu130 (docs/cuda.md): the same fully masked row, two answers.
SDPA_DEVICES_DIFFER = dict(
    law="cuda_matches_cpu", when={"fully_masked": True, "dtype": "float32"}, match=r"like on the CPU",
    reason="a float32 row whose keys are all hidden by HF's finfo.min mask: on CUDA, SDPA's memory-efficient "
           "kernel (torch's pick for a float32 mask) gives it attention 0, so its output is o_proj.bias as the "
           "spec says; on the CPU the same row gets uniform weights over the hidden keys (the deviation of "
           "fully_masked_rows_follow_policy). In bfloat16 and float16 both devices give the uniform weights")


class BartAttentionAdapter(Adapter):
    """``BartAttention(embed_dim, num_heads, dropout, bias, config=BartConfig(attn_implementation="eager"))``."""

    name = "hf.BartAttention"
    capabilities = Capabilities(
        shared_key_value=True,  # key_value_states feeds both k_proj and v_proj: keys are values
        kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
        fully_masked_rows="zeros",
        deviations=[*FULLY_MASKED_DEVIATIONS,
                    dict(law="empty_sequences", match=r"^with no queries \(L=0.*call raised RuntimeError",
                         reason="an empty sequence (L = 0) raises RuntimeError: the heads are split with "
                                "view(B, L, -1, head_dim), and -1 is ambiguous for 0 elements")])

    def build(self, config, *, dtype, device):
        check_config(self.name, config)
        hf_config = BartConfig(d_model=config.embed_dim, encoder_attention_heads=config.num_heads,
                               decoder_attention_heads=config.num_heads, attention_dropout=config.dropout,
                               attn_implementation="eager")
        module = BartAttention(config.embed_dim, config.num_heads, dropout=config.dropout, bias=config.bias,
                               config=hf_config)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        context = keys_are_values(self.name, query, key, value)
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        mask = hf_additive_mask(key_padding_mask, attn_mask, batch=query.shape[0], num_heads=module.num_heads,
                                dtype=query.dtype)
        out, w = module(query, key_value_states=context, attention_mask=mask)  # w: (B, H, L, S) after dropout
        return out, returned_weights(w, need_weights, average_attn_weights)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(*_linears(module, "out_proj"))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, *_linears(module, "out_proj"))


class Sam3AttentionAdapter(Adapter):
    """``Sam3Attention(Sam3DETRDecoderConfig(hidden_size=E, num_attention_heads=H, attn_implementation="eager"))``."""

    name = "hf.Sam3Attention"
    capabilities = Capabilities(
        kdim_vdim=False, bias_values=(True,), bias_kv=False, zero_attn=False,
        attention_dropout=False,  # forward passes dropout=0.0 to the attention, always
        layouts=("batch_first",), fully_masked_rows="zeros",
        deviations=[
            *FULLY_MASKED_DEVIATIONS,
            dict(law="rejects_indivisible_embed_dim", match="returned normally",
                 reason="Sam3Attention takes head_dim = hidden_size // num_attention_heads without checking that "
                        "it divides: hidden_size=3, num_attention_heads=2 constructs (q/k/v/o_proj 3 -> 3, "
                        "head_dim 1) and the first call fails in view(B, L, 2, 1)"),
        ])

    def build(self, config, *, dtype, device):
        check_config(self.name, config, dropout=False, bias=(True,))
        hf_config = Sam3DETRDecoderConfig(hidden_size=config.embed_dim, num_attention_heads=config.num_heads,
                                          attn_implementation="eager")
        return Sam3Attention(hf_config).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        mask = hf_additive_mask(key_padding_mask, attn_mask, batch=query.shape[0],
                                num_heads=module.num_attention_heads, dtype=query.dtype)
        out, w = module(query, key, value, attention_mask=mask)  # w: (B, H, L, S)
        return out, returned_weights(w, need_weights, average_attn_weights)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(*_linears(module, "o_proj"))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, *_linears(module, "o_proj"))


BART = BartAttentionAdapter()
SAM3 = Sam3AttentionAdapter()
BART.origin = f"{__name__}:BART"
SAM3.origin = f"{__name__}:SAM3"


# -------------------------------------------------------------- a grouped-query, always-causal decoder attention

def _llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention
    return LlamaConfig, LlamaAttention


class LlamaAttentionAdapter(Adapter):
    """``LlamaAttention(LlamaConfig(hidden_size=E, num_attention_heads=H, num_key_value_heads=Hkv), layer_idx=0)``.

    Self-attention of a decoder: always causal (top-left, L == S), grouped-query heads through
    ``num_key_value_heads`` (``repeat_kv``: query head h reads key/value head h // G). Rotary
    embeddings are set to the identity (``position_embeddings`` cos = 1, sin = 0) until the spec
    covers them. As ``LlamaModel`` does (``create_causal_mask``), the adapter hands the layer the
    causal mask merged with the other masks as one additive 4-D mask (``finfo.min`` where hidden);
    with ``attn_implementation="sdpa"`` and no other mask it passes no mask, and the layer's own
    ``is_causal`` reaches SDPA as its flag.
    """

    def __init__(self, name: str, implementation: str):
        self.name, self.implementation = name, implementation
        eager = implementation == "eager"
        self.capabilities = Capabilities(
            cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
            returns_weights=eager, returns_per_head_weights=eager, attention_dropout=eager, causality="always",
            grouping="any",
            # the adapter merges the masks into one, as LlamaModel does
            validates_mask_shapes=False, validates_mask_dtypes=False,
            compute_dtype=torch.float32 if eager else None,  # eager softmax: softmax(..., dtype=torch.float32)
            fully_masked_rows="zeros",
            deviations=[*FULLY_MASKED_DEVIATIONS, *([] if eager else [SDPA_DEVICES_DIFFER]),
                        dict(law="empty_sequences", match=r"^with no queries \(L=0.*call raised RuntimeError",
                             reason="an empty sequence (L = 0) raises RuntimeError: the heads are split with "
                                    "view(*input_shape, -1, head_dim), and -1 is ambiguous for 0 elements")])

    def hf_config(self, config, **extra):
        """The ``LlamaConfig`` of one layer for an attnspec ``Config`` (``extra``: more of its fields)."""
        LlamaConfig, _ = _llama()
        return LlamaConfig(hidden_size=config.embed_dim, num_attention_heads=config.num_heads,
                           num_key_value_heads=config.kv_heads, head_dim=config.embed_dim // config.num_heads,
                           attention_bias=config.bias, attention_dropout=config.dropout,
                           attn_implementation=self.implementation, **extra)

    def build(self, config, *, dtype, device):
        check_config(self.name, config)
        _, LlamaAttention = _llama()
        hf_config = self.hf_config(config)
        if config.embed_dim % config.num_heads:
            raise ValueError(f"{self.name}: embed_dim={config.embed_dim} is not divisible by "
                             f"num_heads={config.num_heads}")
        return LlamaAttention(hf_config, layer_idx=0).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=True, positions=None, key_positions=None):
        if not is_causal:
            raise ValueError(f"{self.name} is a decoder's attention: always causal")
        if key is not query or value is not query:
            raise ValueError(f"{self.name} is self-attention only: key and value must be the query tensor itself")
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, L, _ = query.shape  # (B, L, E)
        cos_sin = self._position_embeddings(module, query, positions)  # (B, L, hd) each
        mask = None
        if key_padding_mask is not None or attn_mask is not None or self.implementation == "eager":
            causal = masks.position_mask(L, L, is_causal=True, device=query.device)  # (L, L): True = future
            attn_mask = masks.with_positions(attn_mask, causal)  # in attn_mask's own dtype: a float one gets -inf
            mask = hf_additive_mask(key_padding_mask, attn_mask, batch=B, num_heads=module.config.num_attention_heads,
                                    dtype=query.dtype, queries=L, keys=L)  # (B|1, H|1, L, L)
        out, w = module(query, position_embeddings=cos_sin, attention_mask=mask)
        if not need_weights:
            return out, None
        return out, returned_weights(w, need_weights, average_attn_weights)

    def _position_embeddings(self, module, query, positions):
        """(cos, sin), each (B, L, hd): here the identity rotation (cos = 1, sin = 0), whatever the positions."""
        ones = torch.ones(*query.shape[:2], module.head_dim, dtype=query.dtype, device=query.device)
        return ones, torch.zeros_like(ones)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(*_linears(module, "o_proj"))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, *_linears(module, "o_proj"))


LLAMA = LlamaAttentionAdapter("hf.LlamaAttention", "eager")
LLAMA_SDPA = LlamaAttentionAdapter("hf.LlamaAttention.sdpa", "sdpa")
LLAMA.origin = f"{__name__}:LLAMA"
LLAMA_SDPA.origin = f"{__name__}:LLAMA_SDPA"


def _llama_rotary():
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    return LlamaRotaryEmbedding, DynamicCache


class LlamaRopeAdapter(LlamaAttentionAdapter):
    """``LlamaAttention`` with its real rotary embeddings and its cache class, as ``LlamaModel`` drives it.

    RoPE: rotate_half, ``rope_theta`` 10000, the whole head; ``position_embeddings=(cos, sin)`` come from
    ``LlamaRotaryEmbedding(config)`` at the positions given, which computes them in float32 whatever the
    dtype (``position_ids.float() * inv_freq.float()``), so the layer declares ``compute_dtype=float32``.
    Decoding: ``new_cache`` is a fresh ``DynamicCache``, passed as ``past_key_values``; the mask is what
    ``create_causal_mask`` gives: none on the sdpa path when a chunk needs no mask (one token, or a prefill
    from an empty cache, without padding: the layer's ``is_causal`` reaches SDPA), else the bottom-right
    causal mask merged with the padding as one additive mask (``finfo.min`` where hidden).
    """

    def __init__(self, name: str, implementation: str):
        super().__init__(name, implementation)
        self.capabilities = self.capabilities.replace(rope=Rope("rotate_half", 10000.0), decoding=True,
                                                      compute_dtype=torch.float32)

    def _rotary(self, module, x, position_ids):
        LlamaRotaryEmbedding, _ = _llama_rotary()
        rotary = LlamaRotaryEmbedding(module.config).to(x.device)  # its inv_freq stays float32
        return rotary(x, position_ids)  # cos, sin (B, T, hd) in x's dtype

    def _position_embeddings(self, module, query, positions):
        B, L, _ = query.shape  # (B, L, E)
        position_ids = positions.reshape(1, L).expand(B, L)  # (L,) -> (B, L): the same for every item
        return self._rotary(module, query, position_ids)  # cos, sin: (B, L, hd) each

    def new_cache(self, module, batch_size, max_length):
        _, DynamicCache = _llama_rotary()
        return DynamicCache()

    def decode(self, module, cache, x, *, positions, key_padding_mask=None):
        B, T, _ = x.shape  # (B, T, E)
        cached = cache.get_seq_length(0)
        S = cached + T
        mask = None
        if key_padding_mask is not None or self.implementation == "eager" or (T > 1 and cached > 0):
            hidden = masks.position_mask(T, S, is_causal=True, alignment="bottom-right", device=x.device)  # (T, S)
            mask = hf_additive_mask(key_padding_mask, None, batch=B, num_heads=module.config.num_attention_heads,
                                    dtype=x.dtype, queries=T, keys=S, positions=hidden)  # (B|1, 1, T, S)
        out, _ = module(x, position_embeddings=self._rotary(module, x, positions), attention_mask=mask,
                        past_key_values=cache)
        return out, cache


LLAMA_ROPE = LlamaRopeAdapter("hf.LlamaAttention.rope", "eager")
LLAMA_ROPE_SDPA = LlamaRopeAdapter("hf.LlamaAttention.rope.sdpa", "sdpa")
LLAMA_ROPE.origin = f"{__name__}:LLAMA_ROPE"
LLAMA_ROPE_SDPA.origin = f"{__name__}:LLAMA_ROPE_SDPA"
