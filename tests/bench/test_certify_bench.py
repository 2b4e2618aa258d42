"""Benchmarks: how long certifying one implementation takes, as a user runs it and as the laws cost.

    python -m pytest tests/bench/test_certify_bench.py -n 0 --benchmark-only --benchmark-min-rounds=3 \\
        --benchmark-json=.benchmarks/certify.json

* ``test_certify_command``: ``pytest --pyargs attnspec.suite --impl X`` from an empty folder,
  end to end (interpreter start, collection, every law in every dtype, the report), with
  ``-n 0`` and ``-n 2``. This is the number a user waits for.
* ``test_certify_laws``: :func:`attnspec.runner.certify` in this process, every law in
  float64, float32 and bfloat16 (the laws' own cost, without process start-up).

Each case is timed over ``--benchmark-min-rounds`` rounds of one call.

Outside a benchmark run each case runs once, untimed and shrunk to one law (the command with
sdpa and ``-n 0`` only), so the plumbing stays tested without costing the default run its minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from attnspec.checks import LAWS
from attnspec.loading import load_impl
from attnspec.runner import certify

from .conftest import timing


def rounds(config) -> int:
    """Timed rounds of a whole certification: ``--benchmark-min-rounds`` in a benchmark run (each takes seconds), else 1."""
    return max(1, int(config.getoption("benchmark_min_rounds"))) if timing(config) else 1


SUBJECTS = {"sdpa": "attnspec.impls.sdpa:SDPA", "nn.MultiheadAttention": "attnspec.impls.torch_mha:ADAPTER"}
DTYPES = (torch.float64, torch.float32, torch.bfloat16)


@pytest.mark.benchmark(group="certify: the command")
@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("certified", list(SUBJECTS))
def test_certify_command(bench, request, tmp_path, certified, workers):
    if not timing(request.config) and (workers, certified) != ("0", "sdpa"):
        pytest.skip("timed in a benchmark run only (outside one, the sdpa case with -n 0 tests the plumbing)")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "attnspec.suite",
               "--impl", SUBJECTS[certified], "--attnspec-devices", "cpu", "-n", workers]
    if not timing(request.config):
        command += ["-k", "output_matches_reference and float64"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATTNSPEC_"))}

    def run():
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"certifying {certified} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
        return done

    bench.extra_info.update(certified=certified, workers=int(workers), command=" ".join(command[1:]))
    bench.pedantic(run, rounds=rounds(request.config), iterations=1)


@pytest.mark.benchmark(group="certify: the laws")
@pytest.mark.parametrize("certified", list(SUBJECTS))
def test_certify_laws(bench, request, certified):
    adapter = load_impl(SUBJECTS[certified])
    laws = None if timing(request.config) else ["output_matches_reference"]

    def run():
        results = [r for dtype in DTYPES for r in certify(adapter, dtype=dtype, laws=laws)]
        wrong = [f"{r.law}: {r.status}" for r in results if r.status not in ("pass", "deviation", "not claimed")]
        if wrong:
            pytest.fail(f"{certified}: {wrong}")
        return results

    bench.extra_info.update(certified=certified, laws=len(LAWS) if laws is None else len(laws))
    bench.pedantic(run, rounds=rounds(request.config), iterations=1)
