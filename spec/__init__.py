"""attnspec: a property-based conformance suite for multi-head attention in PyTorch."""
if __name__ != "attnspec":  # the repository's spec/ folder is the attnspec package: one name, one registry of laws
    raise ImportError(f"this is the attnspec package, imported as {__name__!r}: install it (pip install -e .) "
                      "and import attnspec")
from .adapter import Adapter, AdapterError, DropIn, Unavailable
from .capabilities import Capabilities, Deviation
from .config import Config, Problem
from .loading import ImplLoadError, load_impl
from .weights import CanonicalWeights

__version__ = "0.1.0"
__all__ = ["Adapter", "AdapterError", "DropIn", "Unavailable", "Capabilities", "Deviation", "Config", "Problem",
           "CanonicalWeights", "ImplLoadError", "load_impl", "__version__"]
