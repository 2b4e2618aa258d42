"""FlexAttention (``torch.nn.attention.flex_attention``) in eager mode, certified as a kernel through the
FlexAttention-style adapter (:class:`attnspec.kernel.FlexStyle`): the soft-cap and ALiBi become a ``score_mod``,
the causal flag and the window a ``block_mask`` (bottom-right). Forward and LSE; eager FlexAttention has no
backward on the CPU, so backward is declared not claimed.

Eager FlexAttention costs about 30 ms a call on two CPU cores (after a first call of seconds), a hundred times a
dense kernel: the default test run certifies it with a few examples per law (tests/test_kernels.py), and its full
certification is one command (docs/kernels.md)."""
from __future__ import annotations

import torch

from attnspec import Deviation
from attnspec.kernel import FlexStyle

FLEX = FlexStyle("flex_attention (eager, kernel)", dtypes=(torch.float64, torch.float32, torch.bfloat16))
FLEX.capabilities = FLEX.capabilities.replace(deviations=(Deviation(
    "kernel_empty_sequences", match="raised IndexError",
    reason="eager FlexAttention (torch 2.13) raises IndexError for Lk = 0 (a max over an empty row), and for Lq = 0 "
           "with a score_mod"),))
FLEX.origin = "attnspec.impls.kernels.flex:FLEX"
