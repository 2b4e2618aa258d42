"""Drop-ins that misbehave the way custom kernels do: each is correct until it is given a key padding mask.

Certified by ``tests/test_isolation.py`` from an empty folder, each must be reported with
its own status and the problem that was running, while a correct module in the same run passes.
"""
from __future__ import annotations

import ctypes
import os
import threading

import torch

from tests.zoo.base import ZooMHA


class _OnPadding(ZooMHA):
    """Calls ``self.misbehave()`` whenever a key padding mask is given."""

    def forward(self, query, key, value, key_padding_mask=None, *args, **kwargs):
        if key_padding_mask is not None:
            self.misbehave()
        return super().forward(query, key, value, key_padding_mask, *args, **kwargs)


class Deadlocks(_OnPadding):
    """Takes a lock it already holds: blocks forever, inside C, holding the GIL loosely."""

    def misbehave(self):
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()


class AlwaysDeadlocks(Deadlocks):
    """Deadlocks on every call."""

    def forward(self, *args, **kwargs):
        self.misbehave()


class SpinsForever(_OnPadding):
    """A Python loop that never ends."""

    def misbehave(self):
        while True:
            pass


class Aborts(_OnPadding):
    """abort(): what an uncaught C++ exception or a failed assertion in an extension does."""

    def misbehave(self):
        os.abort()


class Segfaults(_OnPadding):
    """Reads address 0 (a bad pointer in a kernel)."""

    def misbehave(self):
        ctypes.string_at(0)


class RaisesCppError(_OnPadding):
    """An error thrown by torch's C++ core (c10::Error), seen in Python as a RuntimeError."""

    def misbehave(self):
        torch.empty(1, 2).view(3, 5)


_HOARD: list = []


class EatsMemory(_OnPadding):
    """Keeps 256 MiB blocks until allocation fails (run it under --attnspec-max-memory; 8 GiB at most)."""

    def misbehave(self):
        while len(_HOARD) < 32:
            _HOARD.append(torch.ones(2**26))
        raise MemoryError("EatsMemory holds 8 GiB and gives up")
