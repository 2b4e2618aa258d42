"""Turn ``pkg.module:Thing`` into an adapter, with one clear error line when it cannot."""
from __future__ import annotations

import importlib
import inspect
import os
import sys

from torch import nn

from .adapter import Adapter, AdapterError, DropIn, validate_adapter


class ImplLoadError(ValueError):
    """A ``--impl`` value that does not name a usable implementation."""


def as_adapter(obj, where: str, name: str | None = None):
    """``obj`` as an adapter: a drop-in nn.Module class is wrapped in DropIn (named ``name``), an Adapter
    class built with no arguments, an adapter object validated; a kernel (:mod:`attnspec.kernel`): a function
    with the canonical signature wrapped in CanonicalKernel, a kernel adapter (or its class) validated.
    Raises ImplLoadError naming ``where``."""
    from .kernel.adapters import KernelAdapter, validate_kernel_adapter
    from .kernel.declaration import DeclarationError, SignatureError
    from .kernel.entries import canonical
    try:
        if isinstance(obj, KernelAdapter) or (inspect.isclass(obj) and issubclass(obj, KernelAdapter)):
            adapter = obj() if inspect.isclass(obj) else obj
            validate_kernel_adapter(adapter, where)
            return adapter
        if callable(obj) and not inspect.isclass(obj) and not hasattr(obj, "build"):
            return canonical(obj, name=name)
    except SignatureError as exc:
        raise ImplLoadError(f"{where}: {obj!r} is neither an nn.Module subclass (a drop-in for "
                            "torch.nn.MultiheadAttention), an adapter (see README, 'Writing an adapter'), nor a kernel "
                            f"function (docs/kernels.md): {exc}") from None
    except DeclarationError as exc:
        raise ImplLoadError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None
    try:
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            adapter = DropIn(obj, name=name)
        elif inspect.isclass(obj) and issubclass(obj, Adapter):
            adapter = obj()
        elif inspect.isclass(obj) or not hasattr(obj, "build"):
            raise ImplLoadError(f"{where}: {obj!r} is neither an nn.Module subclass (a drop-in for "
                                "torch.nn.MultiheadAttention), an adapter (see docs/adapters.md), nor a "
                                "kernel function (docs/kernels.md)")
        else:
            adapter = obj
        validate_adapter(adapter, where)
    except AdapterError as exc:
        raise ImplLoadError(str(exc)) from None
    return adapter


def _import(module_name: str):
    """Import ``module_name``; where its top-level package is a file or folder of the working directory that
    is not on ``sys.path`` (the ``pytest`` script, unlike ``python -m pytest``, leaves it off), from there."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top, here = module_name.split(".")[0], os.getcwd()
        beside = os.path.isfile(os.path.join(here, f"{top}.py")) or os.path.isdir(os.path.join(here, top))
        if exc.name != top or not beside or here in sys.path or "" in sys.path:
            raise
    sys.path.insert(0, here)  # a child process that runs the laws inherits it
    return importlib.import_module(module_name)


def load_impl(value: str):
    """The adapter named by ``value``: ``pkg.module:Class`` (an ``nn.MultiheadAttention`` drop-in),
    ``pkg.module:adapter`` (an adapter object) or ``pkg.module:AdapterClass`` (built with no arguments),
    ``pkg.module:attn`` (a kernel function with the canonical signature, docs/kernels.md) or a kernel adapter.
    """
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ImplLoadError(f"--impl {value!r}: expected 'package.module:Name'")
    module_name, attr = value.split(":")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        raise ImplLoadError(f"--impl {value!r}: cannot import module {module_name!r} ({exc}); install its package, "
                            f"or run pytest from the folder that holds {module_name.split('.')[0]!r}") from None
    except Exception as exc:
        raise ImplLoadError(f"--impl {value!r}: importing {module_name!r} raised "
                            f"{type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImplLoadError(f"--impl {value!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    adapter = as_adapter(obj, f"--impl {value!r}", name=value)
    try:
        adapter.origin = value
    except AttributeError:
        pass
    return adapter
