"""Attention layers of 2024-25 Hugging Face decoders (certified with transformers 5.23.0), each built from a
tiny config (no weights are downloaded) and driven as its model drives it, with eager attention.

* ``Gemma2Attention``: logit soft-capping (``attn_logit_softcapping`` is ``Config.softcap``), a softmax scale
  of ``query_pre_attn_scalar ** -0.5`` (``Config.softmax_scale``), grouped-query heads, a sliding window on its
  ``sliding_attention`` layers, RoPE.
* ``Qwen3Attention``: QK-norm, an RMSNorm of each query and key head (``q_norm``, ``k_norm`` of head_dim)
  before RoPE; grouped-query heads.
* ``Olmo2Attention``: QK-norm over the whole projection (``q_norm`` of E, ``k_norm`` of Hkv * head_dim),
  before the head split; grouped-query heads.
* ``GptOssAttention``: learned attention sinks (``sinks``, one logit per head in each row's denominator), a
  sliding window, grouped-query heads, gpt-oss's YaRN RoPE.
* ``BloomAttention``: ALiBi, added to the logits as the ``alibi`` tensor ``BloomModel`` builds.
* ``FalconAttention`` with ``alibi=True`` (Falcon-RW), driven as ``FalconModel`` drives it: its eager path adds
  ALiBi twice (``FALCON_ALIBI``, a bug of transformers 5.23.0); its sdpa path once (``FALCON_ALIBI_SDPA``).
* ``GPTBigCodeAttention`` with ``multi_query=True`` (SantaCoder, StarCoder): one key/value head.
* ``LlamaAttention`` with scaled rotary embeddings (``linear``, ``dynamic``, ``llama3``, ``yarn``) through the
  real ``LlamaRotaryEmbedding``.

Every one is a decoder layer's self-attention, always causal. As the models do (``create_causal_mask``,
``create_sliding_window_causal_mask``), the adapter hands the layer one additive 4-D mask: the causal mask,
the window of a sliding layer (``sliding_window = left + 1`` keys, the query's own included), and the masks
given, merged with :mod:`attnspec.masks` and filled with ``finfo(dtype).min`` (``hf_additive_mask``). The
rotary embeddings (cos, sin) come from the model's own rotary class, made once per module as the model makes
it once, at the positions given. What the suite found, and why each deviation is one: ``docs/thirdparty.md``.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from attnspec import from_linears, masks, to_linears
from attnspec.adapter import Adapter, copy_
from attnspec.capabilities import Capabilities
from attnspec.config import QKNorm, Rope, RopeScaling
from attnspec.weights import CanonicalWeights

from ._common import check_config, check_mask_dtypes, returned_weights
from .hf_transformers import FULLY_MASKED_DEVIATIONS, SDPA_DEVICES_DIFFER, LlamaRopeAdapter, hf_additive_mask

EMPTY_SEQUENCES = dict(
    law="empty_sequences", match=r"^with no queries \(L=0.*call raised RuntimeError",
    reason="an empty sequence (L = 0) raises RuntimeError: the heads are split with view(*input_shape, -1, head_dim), "
           "and -1 is ambiguous for 0 elements")

DECODER_DEVIATIONS = [*FULLY_MASKED_DEVIATIONS, EMPTY_SEQUENCES]

BLOOM_EMPTY = dict(
    law="empty_sequences", match=r"^with no queries \(L=0.*call raised RuntimeError",
    reason="an empty sequence (L = 0) raises RuntimeError: the logits are viewed as (batch_size, num_heads, q_length, "
           "-1), and -1 is ambiguous for 0 elements")

SDPA_FULLY_MASKED = dict(
    law="fully_masked_rows_follow_policy", when={"fully_masked": True}, match=r"\] = -?[0-9]",
    reason="a row whose keys are all hidden by a bool mask (finfo.min where hidden, as the model fills it) gets "
           "uniform weights over them, so its output is the mean of the values projected by dense, not its bias; a "
           "row hidden by a float -inf mask gets attention 0 from SDPA, as the policy says")


def _hf(model: str):
    """``transformers.models.<model>.modeling_<model>``, imported on first use."""
    return importlib.import_module(f"transformers.models.{model}.modeling_{model}")


def _rope_parameters(rope: Rope) -> dict:
    """A declared :class:`~attnspec.config.Rope` as Hugging Face's ``rope_parameters``."""
    s = rope.scaling
    if s is None:
        return {"rope_type": "default", "rope_theta": rope.base}
    params = {"rope_type": s.kind, "rope_theta": rope.base, "factor": s.factor}
    if s.kind == "llama3":
        params.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                      original_max_position_embeddings=s.original_max_positions)
    elif s.kind == "yarn":
        params.update(beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate,
                      original_max_position_embeddings=s.original_max_positions)
        if s.attention_factor is not None:
            params["attention_factor"] = s.attention_factor
    return params


def _max_positions(rope: Rope) -> int:
    """``max_position_embeddings``: the trained context under dynamic NTK scaling (which reads it from there), the
    extended one under YaRN (``factor`` times the trained one, as YaRN's checkpoints say), else long enough for every
    position drawn."""
    s = rope.scaling
    if s is not None and s.kind == "dynamic":
        return s.original_max_positions
    return int(s.factor * s.original_max_positions) if s is not None and s.kind == "yarn" else 4096


def _rotary(module):
    """The rotary embedding of ``module``'s model, made once (as the model makes it once; dynamic NTK scaling keeps
    state in it) after the module was moved to its dtype, so that its ``inv_freq`` stays float32 as it is in a model
    loaded with ``from_pretrained(dtype=...)``. Kept out of the module's parameters and buffers."""
    return module.__dict__["_attnspec_rotary"]


class HFDecoderAttentionAdapter(Adapter):
    """A decoder attention layer called ``forward(hidden_states, position_embeddings, attention_mask)``, built as
    ``<Model>Attention(<Model>Config(...), layer_idx=0)`` with one layer of the type the window asks for.

    ``model``: the module name under ``transformers.models`` (``"gemma2"``); ``prefix``: the class prefix
    (``"Gemma2"``); ``extra(config)``: the model's own config fields for an attnspec ``Config``; ``norms``: the
    QK-norm parameters (``q_norm``, ``k_norm``) whose ``weight`` is a canonical weight; ``sinks``: the module has
    a ``sinks`` parameter.
    """

    def __init__(self, name: str, model: str, prefix: str, *, rope: Rope, extra=None, norms: bool = False,
                 sinks: bool = False, fully_masked=FULLY_MASKED_DEVIATIONS, deviations=(), **capabilities):
        self.name, self.model, self.prefix = name, model, prefix
        self.extra, self.norms, self.sinks = extra or (lambda config: {}), norms, sinks
        self.capabilities = Capabilities(
            cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
            causality="always", grouping="any", rope=rope, attention_sinks=sinks,
            # head_dim is a constructor argument of its own: hidden_size need not be num_heads * head_dim
            embed_dim_and_heads=False,
            validates_mask_shapes=False, validates_mask_dtypes=False,  # the adapter merges the masks, as the model does
            compute_dtype=torch.float32,  # cos and sin are computed in float32; so are the softmax and the norms
            fully_masked_rows="zeros", deviations=[*fully_masked, EMPTY_SEQUENCES, *deviations], **capabilities)

    def hf_config(self, config):
        """The ``<Model>Config`` of one layer for an attnspec ``Config``."""
        config_class = getattr(importlib.import_module(f"transformers.models.{self.model}"), f"{self.prefix}Config")
        window = config.window
        fields = dict(hidden_size=config.embed_dim, num_attention_heads=config.num_heads,
                      num_key_value_heads=config.kv_heads, head_dim=config.head_dim, attention_bias=config.bias,
                      attention_dropout=config.dropout, num_hidden_layers=1, rms_norm_eps=self.eps,
                      rope_parameters=_rope_parameters(self.capabilities.rope),
                      max_position_embeddings=_max_positions(self.capabilities.rope),
                      attn_implementation="eager", **self.extra(config))
        if self.capabilities.window_kind is not None:  # a sliding layer: it sees sliding_window keys, itself included
            fields.update(layer_types=["sliding_attention" if window is not None else "full_attention"],
                          sliding_window=None if window is None else window[0] + 1)
        return config_class(**fields)

    @property
    def eps(self) -> float:
        norm = self.capabilities.qk_norm
        return 1e-6 if norm is None else norm.eps

    def build(self, config, *, dtype, device):
        check_config(self.name, config)
        if config.embed_dim % config.num_heads:
            raise ValueError(f"{self.name}: embed_dim={config.embed_dim} is not divisible by "
                             f"num_heads={config.num_heads}")
        if config.window is not None and config.window[1] is not None:
            raise ValueError(f"{self.name}: a sliding window looks back only: window=(left, None), not {config.window}")
        module_file, hf_config = _hf(self.model), self.hf_config(config)
        module = getattr(module_file, f"{self.prefix}Attention")(hf_config, layer_idx=0).to(device=device, dtype=dtype)
        rotary = getattr(module_file, f"{self.prefix}RotaryEmbedding")(hf_config).to(device)  # inv_freq stays float32
        module.__dict__["_attnspec_rotary"] = rotary
        return module

    def window(self, module):
        """The look-back window of a sliding layer, as attnspec writes it: ``(sliding_window - 1, None)``, or None."""
        sliding = getattr(module, "sliding_window", None)
        return None if sliding is None else (sliding - 1, None)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=True, positions=None, key_positions=None):
        if not is_causal:
            raise ValueError(f"{self.name} is a decoder's attention: always causal")
        if key is not query or value is not query:
            raise ValueError(f"{self.name} is self-attention only: key and value must be the query tensor itself")
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, L, _ = query.shape  # (B, L, E)
        hidden = masks.position_mask(L, L, is_causal=True, window=self.window(module), device=query.device)  # (L, L)
        attn_mask = masks.with_positions(attn_mask, hidden)  # in attn_mask's own dtype: a float one gets -inf
        mask = hf_additive_mask(key_padding_mask, attn_mask, batch=B, num_heads=module.config.num_attention_heads,
                                dtype=query.dtype, queries=L, keys=L)  # (B|1, H|1, L, L)
        position_ids = positions.reshape(1, L).expand(B, L)  # (L,) -> (B, L): the same for every item
        cos_sin = _rotary(module)(query, position_ids)  # (B, L, hd) each (gpt-oss: hd / 2), in query's dtype
        out, w = module(query, position_embeddings=cos_sin, attention_mask=mask)  # w: (B, H, L, L)
        return out, returned_weights(w, need_weights, average_attn_weights)

    def _extras(self, module) -> dict:
        extras = {}
        if self.norms:
            extras.update(q_norm=module.q_norm.weight, k_norm=module.k_norm.weight)
        if self.sinks:
            extras["sinks"] = module.sinks
        return extras

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(module.q_proj, module.k_proj, module.v_proj, module.o_proj, **self._extras(module))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, module.q_proj, module.k_proj, module.v_proj, module.o_proj)
        if self.norms:
            copy_(module.q_norm.weight, weights.q_norm)
            copy_(module.k_norm.weight, weights.k_norm)
        if self.sinks:
            copy_(module.sinks, weights.sinks)


# ----------------------------------------------------------------------------------------------------- Gemma 2

def _gemma2_extra(config) -> dict:
    """Gemma-2's cap: ``attn_logit_softcapping`` (None: none). Its scale (``scaling = query_pre_attn_scalar ** -0.5``)
    is set by :class:`Gemma2Adapter`."""
    return dict(attn_logit_softcapping=config.softcap, final_logit_softcapping=None)


class Gemma2Adapter(HFDecoderAttentionAdapter):
    """``Gemma2Attention``: ``scaling = query_pre_attn_scalar ** -0.5``, so a softmax_scale s is the scalar ``s ** -2``
    (head_dim, the default, gives ``head_dim ** -0.5``).

    ``Gemma2Config`` types ``query_pre_attn_scalar`` as an int (every checkpoint's is: 256, or 144 for 27B, so
    their scales are ``n ** -0.5``), and refuses a float at construction and assignment. The layer computes with any
    number, and attnspec draws scales such as 0.7 and 2.0: the adapter constructs the config with an int and, where
    the scalar is not one, writes it past the check (``object.__setattr__``). Nothing else reads it."""

    def hf_config(self, config):
        hf_config = super().hf_config(config)
        scalar = config.head_dim if config.softmax_scale is None else config.softmax_scale ** -2
        if float(scalar).is_integer():
            hf_config.query_pre_attn_scalar = int(scalar)
        else:
            object.__setattr__(hf_config, "query_pre_attn_scalar", scalar)
        return hf_config


GEMMA2 = Gemma2Adapter(
    "hf.Gemma2Attention", "gemma2", "Gemma2", rope=Rope("rotate_half", 10000.0), extra=_gemma2_extra,
    takes_softmax_scale=True, takes_softcap=True, window_kind="left")

# ----------------------------------------------------------------------------------------------------- Qwen3, OLMo-2

QWEN3 = HFDecoderAttentionAdapter(
    "hf.Qwen3Attention", "qwen3", "Qwen3", rope=Rope("rotate_half", 1000000.0), norms=True,
    qk_norm=QKNorm(over="head", eps=1e-6))

OLMO2 = HFDecoderAttentionAdapter(
    "hf.Olmo2Attention", "olmo2", "Olmo2", rope=Rope("rotate_half", 500000.0), norms=True,
    qk_norm=QKNorm(over="all", eps=1e-6))

# ----------------------------------------------------------------------------------------------------- gpt-oss

# gpt-oss's YaRN as it ships: factor 32 over 4096 positions, beta 32 / 1, rope_theta 150000, truncate=False.
GPT_OSS_ROPE = Rope("rotate_half", 150000.0, scaling=RopeScaling("yarn", 32.0, original_max_positions=4096,
                                                                  beta_fast=32.0, beta_slow=1.0, truncate=False))

# No fully-masked-row deviations: a row whose keys are all hidden gives its weight to the sink, so its attention is 0
# and its output o_proj.bias, as the spec's policy says, with finfo.min and with -inf masks alike.
GPT_OSS = HFDecoderAttentionAdapter(
    "hf.GptOssAttention", "gpt_oss", "GptOss", rope=GPT_OSS_ROPE, sinks=True, window_kind="left",
    fully_masked=())

for _adapter, _attr in ((GEMMA2, "GEMMA2"), (QWEN3, "QWEN3"), (OLMO2, "OLMO2"), (GPT_OSS, "GPT_OSS")):
    _adapter.origin = f"{__name__}:{_attr}"


# ----------------------------------------------------------------------------------------------------- BLOOM (ALiBi)

class WithAlibiSlopes(nn.Module):
    """An attention layer that takes its ALiBi bias as an input (``attention``), with the slopes as a parameter
    (``alibi_slopes``, (H,)), which the model keeps as fixed numbers (``build_alibi_tensor``); as a parameter they
    can be set and differentiated."""

    def __init__(self, attention: nn.Module, slopes: torch.Tensor):
        super().__init__()
        self.attention = attention
        self.alibi_slopes = nn.Parameter(slopes)


class BloomAttentionAdapter(Adapter):
    """``BloomAttention(BloomConfig(hidden_size=E, n_head=H, attention_dropout=p, hidden_dropout=0), layer_idx=0)``,
    called ``forward(hidden_states, residual, alibi, attention_mask)``.

    ALiBi: the layer adds ``alibi`` (B*H, 1, S), row ``b*H + h``, to the scaled logits (``alibi.baddbmm(q, kᵀ,
    beta=1, alpha=head_dim ** -0.5)``), then the mask. ``BloomModel`` builds it with ``build_alibi_tensor``:
    ``slope_h * position_j``, the key's position ``j``; the adapter does the same from the slopes parameter
    (``WithAlibiSlopes``). Under causality ``slope * j`` is ALiBi's ``-slope * (i - j)`` plus ``slope * i``,
    constant in each row, which the softmax ignores. The fused ``query_key_value`` interleaves the heads: its rows
    are (H, 3, head_dim), head h's query, key and value in turn. The residual is zeros and ``hidden_dropout`` 0, so
    the output is the attention's own (``dense`` of the heads).
    """

    name = "hf.BloomAttention"
    capabilities = Capabilities(
        cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
        bias_values=(True,),  # query_key_value and dense always have biases
        causality="always", alibi=True, validates_mask_shapes=False, validates_mask_dtypes=False,
        compute_dtype=torch.float32,  # softmax(..., dtype=torch.float32)
        fully_masked_rows="zeros", deviations=[*FULLY_MASKED_DEVIATIONS, BLOOM_EMPTY])

    def build(self, config, *, dtype, device):
        check_config(self.name, config, bias=(True,))
        from transformers import BloomConfig
        from transformers.models.bloom.modeling_bloom import BloomAttention, build_alibi_tensor
        hf_config = BloomConfig(hidden_size=config.embed_dim, n_head=config.num_heads, n_layer=1,
                                attention_dropout=config.dropout, hidden_dropout=0.0)
        attention = BloomAttention(hf_config, layer_idx=0)  # raises ValueError for an indivisible embed_dim
        H = config.num_heads
        slopes = build_alibi_tensor(torch.ones(1, 2), H, torch.float32).reshape(H, 2)[:, 1]  # BLOOM's (H,): * position 1
        return WithAlibiSlopes(attention, slopes).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=True):
        if not is_causal:
            raise ValueError(f"{self.name} is a decoder's attention: always causal")
        if key is not query or value is not query:
            raise ValueError(f"{self.name} is self-attention only: key and value must be the query tensor itself")
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, L, _ = query.shape  # (B, L, E)
        H = module.attention.num_heads
        hidden = masks.position_mask(L, L, is_causal=True, device=query.device)  # (L, L): True = future
        mask = hf_additive_mask(key_padding_mask, masks.with_positions(attn_mask, hidden), batch=B, num_heads=H,
                                dtype=query.dtype, queries=L, keys=L)  # (B|1, H|1, L, L)
        out, w = module.attention(query, torch.zeros_like(query), self.alibi(module, query), mask)  # w: (B, H, L, L)
        return out, returned_weights(w, need_weights, average_attn_weights)

    def alibi(self, module, query):
        """``build_alibi_tensor``'s (B*H, 1, S), row ``b*H + h``: ``slope_h * j`` for key j, from the slopes parameter."""
        B, S, _ = query.shape
        H = module.attention.num_heads
        position = torch.arange(S, device=query.device, dtype=query.dtype)  # (S,): each key's position
        return (module.alibi_slopes[None, :, None] * position).expand(B, H, S).reshape(B * H, 1, S)

    def get_weights(self, module) -> CanonicalWeights:
        layer = module.attention
        return from_linears(qkv=layer.query_key_value, out=layer.dense, heads_interleaved=layer.num_heads,
                            alibi_slopes=module.alibi_slopes)

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        layer = module.attention
        to_linears(weights, qkv=layer.query_key_value, out=layer.dense, heads_interleaved=layer.num_heads)
        copy_(module.alibi_slopes, weights.alibi_slopes)


BLOOM = BloomAttentionAdapter()
BLOOM.origin = f"{__name__}:BLOOM"


# ----------------------------------------------------------------------------------------------------- Falcon (ALiBi)

class FalconAlibiAdapter(Adapter):
    """``FalconAttention(FalconConfig(hidden_size=E, num_attention_heads=H, alibi=True, multi_query=False,
    new_decoder_architecture=False), layer_idx=0)`` (Falcon-RW), driven exactly as ``FalconModel`` drives it.

    ``FalconModel`` builds ``alibi = build_alibi_tensor(...)`` (``slope * position_j``, (B*H, 1, S)), passes it to
    the layer, and also writes ``alibi / sqrt(head_dim)`` into the additive attention mask where a key is visible
    (``masked_fill(alibi / sqrt(head_dim), causal_mask < -1, finfo.min)``). Falcon-RW scales its ALiBi by
    ``head_dim ** -0.5`` with the logits, so the canonical slope (``alibi_slopes``, the parameter of
    ``WithAlibiSlopes``) is the model's slope over sqrt(head_dim): the adapter passes ``alibi_slopes * sqrt(head_dim)``
    as the model's slopes. The sdpa path adds the mask only (once); the eager path adds ``alibi`` in the layer
    (``(scores + alibi) * inv_norm_factor``) and the mask too: twice (docs/thirdparty.md). The fused
    ``query_key_value`` interleaves the heads, as BLOOM's does.
    """

    def __init__(self, name: str, implementation: str):
        self.name, self.implementation = name, implementation
        eager = implementation == "eager"
        self.capabilities = Capabilities(
            cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
            returns_weights=eager, returns_per_head_weights=eager,
            causality="always", alibi=True, validates_mask_shapes=False, validates_mask_dtypes=False,
            compute_dtype=torch.float32,  # cos, sin and the bfloat16 logits are float32 (eager); the mask of sdpa
            fully_masked_rows="zeros",
            deviations=FULLY_MASKED_DEVIATIONS if eager else [SDPA_FULLY_MASKED, SDPA_DEVICES_DIFFER])

    def build(self, config, *, dtype, device):
        check_config(self.name, config)
        from transformers import FalconConfig
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor
        from transformers.models.falcon.modeling_falcon import FalconAttention
        hf_config = FalconConfig(hidden_size=config.embed_dim, num_attention_heads=config.num_heads,
                                 num_hidden_layers=1, alibi=True, multi_query=False, new_decoder_architecture=False,
                                 bias=config.bias, attention_dropout=config.dropout, hidden_dropout=0.0,
                                 attn_implementation=self.implementation)
        attention = FalconAttention(hf_config, layer_idx=0)  # raises ValueError for an indivisible embed_dim
        H = config.num_heads
        slopes = build_alibi_tensor(torch.ones(1, 2), H, torch.float32).reshape(H, 2)[:, 1]  # the model's (H,)
        return WithAlibiSlopes(attention, slopes * attention.inv_norm_factor).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=True):
        if not is_causal:
            raise ValueError(f"{self.name} is a decoder's attention: always causal")
        if key is not query or value is not query:
            raise ValueError(f"{self.name} is self-attention only: key and value must be the query tensor itself")
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, L, _ = query.shape  # (B, L, E)
        layer = module.attention
        H = layer.num_heads
        hidden = masks.position_mask(L, L, is_causal=True, device=query.device)  # (L, L): True = future
        mask = hf_additive_mask(key_padding_mask, masks.with_positions(attn_mask, hidden), batch=B, num_heads=H,
                                dtype=query.dtype, queries=L, keys=L)  # (B|1, H|1, L, L)
        position = torch.arange(L, device=query.device, dtype=query.dtype)  # (S,): each key's position
        slopes = module.alibi_slopes / layer.inv_norm_factor  # the model's slopes: Falcon scales ALiBi with the logits
        alibi = (slopes[None, :, None] * position).expand(B, H, L)  # (B, H, S), as build_alibi_tensor
        # FalconModel: the ALiBi bias over sqrt(head_dim) where a key is visible, finfo.min where it is hidden
        with_alibi = mask + (alibi * layer.inv_norm_factor)[:, :, None, :]  # (B, H, L, S)
        out, w = layer(query, alibi=alibi.reshape(B * H, 1, L), attention_mask=with_alibi)  # w: (B, H, L, S) or None
        return out, returned_weights(w, need_weights, average_attn_weights) if w is not None else None

    def get_weights(self, module) -> CanonicalWeights:
        layer = module.attention
        return from_linears(qkv=layer.query_key_value, out=layer.dense, heads_interleaved=layer.num_heads,
                            alibi_slopes=module.alibi_slopes)

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        layer = module.attention
        to_linears(weights, qkv=layer.query_key_value, out=layer.dense, heads_interleaved=layer.num_heads)
        copy_(module.alibi_slopes, weights.alibi_slopes)


FALCON_ALIBI = FalconAlibiAdapter("hf.FalconAttention.alibi", "eager")
FALCON_ALIBI_SDPA = FalconAlibiAdapter("hf.FalconAttention.alibi.sdpa", "sdpa")
FALCON_ALIBI.origin = f"{__name__}:FALCON_ALIBI"
FALCON_ALIBI_SDPA.origin = f"{__name__}:FALCON_ALIBI_SDPA"


# ----------------------------------------------------------------------------------------------------- GPTBigCode (MQA)

class GPTBigCodeMQAAdapter(Adapter):
    """``GPTBigCodeAttention(GPTBigCodeConfig(n_embd=E, n_head=H, multi_query=True), layer_idx=0)``: SantaCoder's and
    StarCoder's multi-query attention. ``c_attn`` projects to ``[q (E); k (head_dim); v (head_dim)]``: one key/value
    head for every query head. Called ``forward(hidden_states, attention_mask=mask)``, the model's causal mask merged
    with the masks given; ``resid_pdrop`` 0, so the output is ``c_proj`` of the heads."""

    name = "hf.GPTBigCodeAttention.mqa"
    capabilities = Capabilities(
        cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, layouts=("batch_first",),
        bias_values=(True,),  # c_attn and c_proj always have biases
        causality="always", grouping="multi-query", validates_mask_shapes=False, validates_mask_dtypes=False,
        compute_dtype=torch.float32,  # softmax(..., dtype=torch.float32)
        fully_masked_rows="zeros", deviations=DECODER_DEVIATIONS)

    def build(self, config, *, dtype, device):
        check_config(self.name, config, bias=(True,))
        if config.kv_heads != 1:
            raise ValueError(f"{self.name} has one key/value head (multi-query), not num_kv_heads={config.kv_heads}")
        from transformers import GPTBigCodeConfig
        from transformers.models.gpt_bigcode.modeling_gpt_bigcode import GPTBigCodeAttention
        hf_config = GPTBigCodeConfig(n_embd=config.embed_dim, n_head=config.num_heads, n_layer=1, multi_query=True,
                                     attn_pdrop=config.dropout, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_implementation="eager")
        return GPTBigCodeAttention(hf_config, layer_idx=0).to(device=device, dtype=dtype)  # ValueError if E % H

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True, is_causal=True):
        if not is_causal:
            raise ValueError(f"{self.name} is a decoder's attention: always causal")
        if key is not query or value is not query:
            raise ValueError(f"{self.name} is self-attention only: key and value must be the query tensor itself")
        check_mask_dtypes(self.name, key_padding_mask, attn_mask)
        B, L, _ = query.shape  # (B, L, E)
        hidden = masks.position_mask(L, L, is_causal=True, device=query.device)  # (L, L): True = future
        mask = hf_additive_mask(key_padding_mask, masks.with_positions(attn_mask, hidden), batch=B,
                                num_heads=module.num_heads, dtype=query.dtype, queries=L, keys=L)  # (B|1, H|1, L, L)
        out, w = module(query, attention_mask=mask)  # w: (B, H, L, L)
        return out, returned_weights(w, need_weights, average_attn_weights)

    def get_weights(self, module) -> CanonicalWeights:
        E = module.embed_dim
        return from_linears(qkv=module.c_attn, out=module.c_proj, split=(E, module.kv_dim, module.kv_dim))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, qkv=module.c_attn, out=module.c_proj)


GPT_BIGCODE_MQA = GPTBigCodeMQAAdapter()
GPT_BIGCODE_MQA.origin = f"{__name__}:GPT_BIGCODE_MQA"


# ----------------------------------------------------------------------------------------------------- Llama, scaled RoPE

DYNAMIC_KEEPS_STATE = dict(
    law="no_state_between_calls", match=r"^(output|weights) after another call",
    reason="LlamaRotaryEmbedding with rope_type='dynamic' keeps the frequencies of the longest call so far "
           "(dynamic_rope_update): it rescales when a call reaches past max_seq_len_cached and restores the "
           "original ones only for a call shorter than max_position_embeddings. A call reaching past the trained "
           "context after a longer one is rotated with the longer one's base (growth only, by design); so is a call "
           "of exactly max_position_embeddings tokens, inside the trained context, where a fresh module uses the "
           "original base (the reset tests seq_len < original_max_seq_len, not <=). "
           "Evidence: tests/test_real_modern_modules.py")


DYNAMIC_EMPTY = dict(
    law="empty_sequences", match=r"^with no queries \(L=0.*call raised RuntimeError: max\(\)",
    reason="an empty sequence (L = 0) raises RuntimeError: the dynamic update of the rotary embedding takes "
           "torch.max of the empty position ids (and the layer's view(*input_shape, -1, head_dim) would be ambiguous "
           "for 0 elements)")


class LlamaScaledRopeAdapter(LlamaRopeAdapter):
    """``LlamaAttention`` with ``rope_parameters`` of a scaled kind, through the real ``LlamaRotaryEmbedding``, made
    once per module as ``LlamaModel`` makes it (dynamic NTK scaling keeps its rescaled frequencies in it)."""

    def __init__(self, name: str, scaling: RopeScaling):
        super().__init__(name, "eager")
        deviations = list(self.capabilities.deviations)
        if scaling.kind == "dynamic":
            deviations = [d for d in deviations if d.law != "empty_sequences"] + [DYNAMIC_EMPTY, DYNAMIC_KEEPS_STATE]
        self.capabilities = self.capabilities.replace(rope=Rope("rotate_half", 10000.0, scaling=scaling),
                                                      deviations=deviations)

    def hf_config(self, config, **extra):
        rope = self.capabilities.rope
        return super().hf_config(config, rope_parameters=_rope_parameters(rope),
                                 max_position_embeddings=_max_positions(rope), **extra)

    def build(self, config, *, dtype, device):
        module = super().build(config, dtype=dtype, device=device)
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        module.__dict__["_attnspec_rotary"] = LlamaRotaryEmbedding(module.config).to(device)
        return module

    def _rotary(self, module, x, position_ids):
        return _rotary(module)(x, position_ids)  # cos, sin (B, T, hd) in x's dtype


# Small trained contexts, so that the positions drawn (up to 37 + 33) reach past them and every regime shows.
LLAMA_ROPE_SCALINGS = {
    "linear": RopeScaling("linear", 4.0),
    "dynamic": RopeScaling("dynamic", 2.0, original_max_positions=16),
    "llama3": RopeScaling("llama3", 8.0, original_max_positions=64, low_freq_factor=1.0, high_freq_factor=4.0),
    "yarn": RopeScaling("yarn", 4.0, original_max_positions=64, beta_fast=32.0, beta_slow=1.0),
}
LLAMA_ROPE_LINEAR, LLAMA_ROPE_DYNAMIC, LLAMA_ROPE_LLAMA3, LLAMA_ROPE_YARN = (
    LlamaScaledRopeAdapter(f"hf.LlamaAttention.rope.{kind}", scaling) for kind, scaling in LLAMA_ROPE_SCALINGS.items())
for _adapter, _attr in ((LLAMA_ROPE_LINEAR, "LLAMA_ROPE_LINEAR"), (LLAMA_ROPE_DYNAMIC, "LLAMA_ROPE_DYNAMIC"),
                        (LLAMA_ROPE_LLAMA3, "LLAMA_ROPE_LLAMA3"), (LLAMA_ROPE_YARN, "LLAMA_ROPE_YARN")):
    _adapter.origin = f"{__name__}:{_attr}"
