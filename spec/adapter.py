"""The adapter contract: how the suite builds, calls and reads any attention module.

Every implementation, bundled or third-party, is reached through an
:class:`Adapter`. It must

* ``build(config, dtype=, device=)`` a module from a :class:`~attnspec.config.Config`;
* ``call(module, query, key, value, key_padding_mask=, attn_mask=, need_weights=,
  average_attn_weights=)`` it, with tensors laid out as ``nn.MultiheadAttention``
  takes them (masks in its polarity: bool ``True`` = masked, floats added), plus
  ``is_causal=`` where ``capabilities.causality`` is ``"flag"`` or ``"always"``, and
  return ``(output, weights or None)`` in ``nn.MultiheadAttention``'s layout
  (weights batch-first);
* ``get_weights(module)`` / ``set_weights(module, weights)`` in canonical form
  (:class:`~attnspec.weights.CanonicalWeights`). ``get_weights`` must build the
  canonical tensors from the parameters by indexing, slicing, reshaping and
  concatenating only: the suite reads parameter gradients through it too;
* declare ``capabilities`` (:class:`~attnspec.capabilities.Capabilities`);
* optionally, ``unavailable(device)``: why it cannot run on this machine's ``device``, or None.

Where ``capabilities.rope`` is declared, ``call`` also gets ``positions`` (L,) and ``key_positions``
(S,): the absolute int64 positions of the queries and keys, the same for every batch item.

Where ``capabilities.decoding`` is declared, the adapter implements incremental decoding of
self-attention with a key/value cache, however the module keeps it:

* ``new_cache(module, batch_size, max_length)``: an empty cache for a new sequence of at most
  ``max_length`` tokens (an object, HF's ``DynamicCache()``, or a reset of a buffer inside the
  module, returning anything, e.g. None);
* ``decode(module, cache, x, *, positions, key_padding_mask=None)``: feed the next tokens ``x``
  (N, T, E), always batch-first, whose absolute positions are ``positions`` (N, T) int64; the first
  call on a new cache is the prefill. Every token sees the cached tokens and those of ``x`` before
  it (bottom-right causal alignment). ``key_padding_mask`` (N, cached + T), bool True = padding,
  covers every token so far (left padding of shorter prompts). Returns ``(output (N, T, E), cache)``.

:class:`DropIn` is a ready adapter for any class with ``nn.MultiheadAttention``'s
constructor, forward signature and parameter names.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .capabilities import Capabilities
from .config import Config
from .errors import AdapterError
from .vocabulary import NO_CUDA
from .weights import CanonicalWeights, copy_

__all__ = ["Adapter", "AdapterError", "DropIn", "Unavailable", "copy_", "validate_adapter", "unavailable_reason"]

class Adapter:
    """Base class: subclass it and implement ``build``, ``get_weights`` and ``set_weights``.

    ``call`` defaults to calling the module like ``nn.MultiheadAttention``.
    """

    name: str = "unnamed"
    capabilities: Capabilities = Capabilities()

    def build(self, config: Config, *, dtype: torch.dtype, device) -> nn.Module:
        raise NotImplementedError

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True, is_causal=False):
        kwargs = {}
        if is_causal:  # only passed where capabilities.causality is "flag" or "always"
            kwargs["is_causal"] = True
        if key_padding_mask is not None:
            kwargs["key_padding_mask"] = key_padding_mask
        if attn_mask is not None:
            kwargs["attn_mask"] = attn_mask
        if not need_weights:
            kwargs["need_weights"] = False
        elif not average_attn_weights:
            kwargs["average_attn_weights"] = False
        return module(query, key, value, **kwargs)

    def get_weights(self, module) -> CanonicalWeights:
        raise NotImplementedError

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        raise NotImplementedError

    def new_cache(self, module, batch_size: int, max_length: int):
        """An empty key/value cache for a new sequence (``capabilities.decoding``)."""
        raise NotImplementedError

    def decode(self, module, cache, x, *, positions, key_padding_mask=None):
        """The next tokens ``x`` (N, T, E) through the cache: ``(output (N, T, E), cache)`` (``capabilities.decoding``)."""
        raise NotImplementedError

    def unavailable(self, device: str) -> str | None:
        """Why the implementation cannot run on ``device`` on this machine (e.g. a kernel this GPU
        lacks), or None. Its cases are then skipped with this reason, never passed."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


REQUIRED = ("build", "call", "get_weights", "set_weights")


def validate_adapter(obj, where: str) -> None:
    """Raise :class:`AdapterError` naming ``where`` if ``obj`` is not a usable adapter."""
    missing = [m for m in REQUIRED if not callable(getattr(obj, m, None))]
    if missing:
        raise AdapterError(f"{where}: adapter {obj!r} has no method {', '.join(missing)}")
    for m in ("build", "get_weights", "set_weights"):
        if getattr(type(obj), m, None) is getattr(Adapter, m):
            raise AdapterError(f"{where}: adapter {obj!r} does not implement {m}()")
    if not isinstance(getattr(obj, "capabilities", None), Capabilities):
        raise AdapterError(f"{where}: adapter {obj!r} has capabilities="
                           f"{getattr(obj, 'capabilities', None)!r}, but should be a attnspec.Capabilities")
    if obj.capabilities.decoding:
        for m in ("new_cache", "decode"):
            if not callable(getattr(obj, m, None)) or getattr(type(obj), m, None) is getattr(Adapter, m):
                raise AdapterError(f"{where}: adapter {obj!r} declares decoding=True but does not implement {m}()")
    if not isinstance(getattr(obj, "name", None), str):
        raise AdapterError(f"{where}: adapter {obj!r} has no string name")


CONSTRUCTOR_DEFAULTS = dict(dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                            kdim=None, vdim=None, batch_first=False, num_kv_heads=None, window=None)


class DropIn(Adapter):
    """Adapter for a class with ``nn.MultiheadAttention``'s constructor, forward and parameters.

    Capabilities come from the class attribute ``attnspec_capabilities`` (a
    :class:`Capabilities`, or a dict of fields to change from the full API), or
    from ``capabilities=`` here.
    """

    def __init__(self, cls, *, name: str | None = None, capabilities: Capabilities | None = None):
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            raise AdapterError(f"DropIn(cls={cls!r}): cls should be an nn.Module subclass")
        self.cls = cls
        self.name = name or f"{cls.__module__}:{cls.__qualname__}"
        declared = getattr(cls, "attnspec_capabilities", None)
        if capabilities is None:
            if isinstance(declared, Capabilities):
                capabilities = declared
            elif isinstance(declared, dict):
                capabilities = Capabilities(**declared)
            elif declared is None:
                capabilities = Capabilities()
            else:
                raise AdapterError(f"{cls.__qualname__}.attnspec_capabilities={declared!r}, but should "
                                   "be a attnspec.Capabilities or a dict of its fields")
        self.capabilities = capabilities

    def build(self, config: Config, *, dtype, device):
        kwargs = {k: getattr(config, k) for k, default in CONSTRUCTOR_DEFAULTS.items()
                  if getattr(config, k) != default}
        module = self.cls(config.embed_dim, config.num_heads, **kwargs)
        return module.to(device=device, dtype=dtype)

    @staticmethod
    def _param(module, name):
        obj = module
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    def get_weights(self, module) -> CanonicalWeights:
        p = lambda n: self._param(module, n)  # noqa: E731
        if p("in_proj_weight") is not None:  # rows [Wq; Wk; Wv]: E, then Ekv each (E with num_kv_heads unset)
            E = p("in_proj_weight").shape[1]
            Wq, Wk, Wv = _split_qkv(p("in_proj_weight"), E)
        elif p("q_proj_weight") is not None:
            Wq, Wk, Wv = p("q_proj_weight"), p("k_proj_weight"), p("v_proj_weight")
            E = Wq.shape[0]
        else:
            raise AdapterError(f"{self.name}: found neither in_proj_weight nor q_proj_weight; "
                               "write an adapter (see docs/adapters.md)")
        bq = bk = bv = None
        if p("in_proj_bias") is not None:
            bq, bk, bv = _split_qkv(p("in_proj_bias"), E)
        flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
        return CanonicalWeights(Wq=Wq, Wk=Wk, Wv=Wv, bq=bq, bk=bk, bv=bv,
                                Wo=p("out_proj.weight"), bo=p("out_proj.bias"),
                                bias_k=flat(p("bias_k")), bias_v=flat(p("bias_v")))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        p = lambda n: self._param(module, n)  # noqa: E731
        if p("in_proj_weight") is not None:
            copy_(p("in_proj_weight"), torch.cat([weights.Wq, weights.Wk, weights.Wv]))
        else:
            for n, w in (("q_proj_weight", weights.Wq), ("k_proj_weight", weights.Wk),
                         ("v_proj_weight", weights.Wv)):
                copy_(p(n), w)
        E = weights.Wq.shape[0]
        zero_if_absent = lambda b, n=E: b if b is not None else weights.Wq.new_zeros(n)  # noqa: E731  absent = 0
        if p("in_proj_bias") is not None:
            Ekv = weights.Wk.shape[0]
            copy_(p("in_proj_bias"), torch.cat([zero_if_absent(weights.bq), zero_if_absent(weights.bk, Ekv),
                                                zero_if_absent(weights.bv, Ekv)]))
        copy_(p("out_proj.weight"), weights.Wo if weights.Wo is not None else torch.eye(E, dtype=weights.Wq.dtype))
        if p("out_proj.bias") is not None:
            copy_(p("out_proj.bias"), zero_if_absent(weights.bo))
        for n in ("bias_k", "bias_v"):
            if p(n) is not None:
                copy_(p(n), getattr(weights, n).reshape(p(n).shape))


def _split_qkv(packed: torch.Tensor, E: int):
    """Packed rows [q (E); k (Ekv); v (Ekv)] as three views; Ekv = E unless keys and values have fewer heads."""
    Ekv = (packed.shape[0] - E) // 2
    return packed.split([E, Ekv, Ekv], dim=0)


@contextlib.contextmanager
def parameters_replaced_by_grads(module: nn.Module):
    """Within the block, every parameter of ``module`` reads as its gradient (zeros if None).

    Lets ``adapter.get_weights`` map parameter gradients to canonical form, since it
    only indexes and reshapes parameters.
    """
    saved = []
    for sub in module.modules():
        for key, param in list(sub._parameters.items()):
            if param is None:
                continue
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            saved.append((sub, key, param))
            sub._parameters[key] = nn.Parameter(grad.detach().clone(), requires_grad=False)
    try:
        yield module
    finally:
        for sub, key, param in saved:
            sub._parameters[key] = param


@dataclass(frozen=True)
class Unavailable:
    """An implementation that cannot load here (its package is not installed, no CUDA at all): shown as
    one skip with ``reason``, never certified or passed. Entry points may list one (:mod:`attnspec.plugin`)."""

    name: str
    reason: str


def unavailable_reason(adapter, device: str) -> str | None:
    """Why ``adapter`` cannot run on ``device`` here: no CUDA at all, else ``adapter.unavailable(device)``
    where the adapter defines it, else None."""
    if device == "cuda" and not torch.cuda.is_available():
        return NO_CUDA
    probe = getattr(adapter, "unavailable", None)  # adapter None: only whether the device exists
    return probe(device) if callable(probe) else None
