"""attnspec: a property-based conformance suite for multi-head attention in PyTorch."""
if __name__ != "attnspec":  # the repository's spec/ folder is the attnspec package: one name, one registry of laws
    raise ImportError(f"this is the attnspec package, imported as {__name__!r}: install it (pip install -e .) "
                      "and import attnspec")
import importlib

__version__ = "0.1.0"
_EXPORTS = {"Adapter": "adapter", "AdapterError": "errors", "DropIn": "adapter", "Unavailable": "adapter",
            "Capabilities": "capabilities", "Deviation": "capabilities", "Config": "config", "Problem": "config",
            "Rope": "config", "RopeScaling": "config", "QKNorm": "config", "Reach": "capabilities",
            "CanonicalWeights": "weights", "from_linears": "weights", "to_linears": "weights",
            "MaskError": "masks", "ImplLoadError": "loading", "load_impl": "loading",
            "replay": "repro", "Verdict": "verdict", "KernelProblem": "kernel.problem",
            "VarlenProblem": "kernel.varlen", "CacheProblem": "kernel.cache",
            "KernelCapabilities": "kernel.declaration", "KernelAdapter": "kernel.adapters",
            "declare_kernel": "kernel.declaration", "DeclarationError": "kernel.declaration"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    """The public names, imported on first use: the pytest plugin loads in every session of an environment
    where attnspec is installed, and one that runs no law must not pay for importing torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
