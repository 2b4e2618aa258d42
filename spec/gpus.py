"""One GPU per pytest-xdist worker: ``pytest -n N`` on a host with N GPUs certifies on all of them.

Worker ``gw<i>`` keeps GPU ``i mod G`` of the G the host shows it (``CUDA_VISIBLE_DEVICES``, else every GPU
NVML counts), by setting ``CUDA_VISIBLE_DEVICES`` in its own environment before anything in it touches CUDA: the
worker, the fork server its laws run under and every law's child process then see that one GPU, as ``cuda:0``.
Under ``pytest -d --tx 4*ssh=a --tx 4*ssh=b`` the worker ids run on across hosts (gw0-3 on a, gw4-7 on b), so
``i mod G`` gives each host's workers its own GPUs 0-3 where every host has 4. Nothing changes with one GPU or
none, in pytest-xdist's controller (it runs no law), with ``--attnspec-gpus all``, or once CUDA is initialised
(a conftest that touched it: a warning says so). Nothing here imports torch before it is needed.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

WORKER = re.compile(r"gw(\d+)$")


def worker_index(workerid: str | None) -> int | None:
    """``"gw3"`` -> 3; None for a process that is no pytest-xdist worker."""
    found = WORKER.match(workerid or "")
    return int(found.group(1)) if found else None


def visible(environ) -> list | None:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` lists (indices or UUIDs, as given), or None where it is not set."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def gpu_count() -> int:
    """The GPUs NVML counts, without initialising CUDA (0 where there is none, or no NVML)."""
    try:
        import torch
        count = torch.cuda._device_count_nvml()  # NVML: CUDA stays uninitialised, so CUDA_VISIBLE_DEVICES still counts
    except Exception:  # no torch, no NVML, another torch: leave the GPUs as they are
        return 0
    return max(count, 0)


def assignment(workerid: str | None, environ, count=gpu_count) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value for worker ``workerid``, or None to leave it (not a worker; one GPU or
    none). ``count``: how many GPUs there are where ``CUDA_VISIBLE_DEVICES`` is not set."""
    index = worker_index(workerid)
    if index is None:
        return None
    gpus = visible(environ)
    if gpus is None:
        gpus = [str(i) for i in range(count())]
    if len(gpus) <= 1:
        return None
    return gpus[index % len(gpus)]


def pin(workerid: str | None, environ=os.environ, count=gpu_count) -> str | None:
    """Give this worker its GPU (see the module docstring); the GPU kept, or None where nothing changed."""
    chosen = assignment(workerid, environ, count)
    if chosen is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        warnings.warn(f"attnspec: CUDA was initialised before pytest-xdist worker {workerid} could keep GPU {chosen} "
                      "alone (a conftest touched it): this worker certifies on every GPU", stacklevel=2)
        return None
    environ["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen
