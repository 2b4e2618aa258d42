"""The kernel contract: certify a functional attention kernel, ``attn(q, k, v, *, causal, softmax_scale,
window_size, softcap, alibi_slopes, return_lse)``, against the float64 reference (docs/kernels.md).

* :mod:`.declaration`: what a kernel claims (:class:`KernelCapabilities`, :func:`declare_kernel`);
* :mod:`.adapters`: how the suite calls it (:class:`CanonicalKernel`, adapters of other signatures);
* :mod:`.problem`, :mod:`.scope`, :mod:`.strategies`: what the laws draw; :mod:`.requirements`: what they need;
* :mod:`.reference`: the reference; :mod:`.case`: :class:`KernelCase`, what the laws in
  :mod:`attnspec.checks.kernel` are written against.
"""
from .adapters import CanonicalKernel, FlexStyle, KernelAdapter, SDPAStyle, XformersStyle
from .declaration import SIGNATURE, DeclarationError, KernelCapabilities, declare_kernel
from .problem import KernelProblem

__all__ = ["SIGNATURE", "CanonicalKernel", "DeclarationError", "FlexStyle", "KernelAdapter", "KernelCapabilities",
           "KernelProblem", "SDPAStyle", "XformersStyle", "declare_kernel"]
