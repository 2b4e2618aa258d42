"""Benchmarks: forward and forward+backward of every implementation over one fixed shape table.

The run (one process; the CPU part takes about 2 minutes on 2 cores; the CUDA cases skip
without a GPU)::

    python -m pytest tests/bench/test_bench.py -n 0 --benchmark-only --benchmark-max-time=0.5 \\
        --benchmark-min-rounds=5 --benchmark-json=.benchmarks/run.json
    python tools/bench_report.py .benchmarks/run.json     # docs/benchmarks.md, docs/scaling.png

On a machine shared with other work, wall-clock times with several threads measure the
scheduler more than the code; prefix ``OMP_NUM_THREADS=1`` and add
``--benchmark-timer=time.process_time`` to time CPU work on one thread instead.

Measured: every adapter in ``attnspec.impls.BUNDLED`` and every ``--impl`` one (after a quick
conformance check: one that fails is listed, not timed), and the baselines
``torch-mha(need_weights=True)``, ``torch-mha(need_weights=False)`` and
``F.scaled_dot_product_attention`` (the bare kernel on already-projected heads).
The shape table is ``SHAPES`` in ``conftest.py``. Implementations are called with
``need_weights=False``, batch-first where they support it. "forward" is eval mode
under ``torch.no_grad()``, where ``nn.MultiheadAttention`` may take its fused fast
path (recorded per case in ``extra_info["torch_mha_path"]``); "forward+backward" is
train mode (dropout 0) with inputs that require grad. Outside a benchmark run each
case runs once, untimed, on the smallest shape only.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnspec.config import Config, Problem
from attnspec.requirements import Scope

DTYPE = torch.float32


def test_not_timed(bad, bench, bench_session):
    """Known-bad implementations are listed, not timed (``bench`` keeps this in a --benchmark-only run)."""
    reason = f"failed conformance: {', '.join(bad.rejected_by)}"
    bench_session.record_not_timed(impl=bad.adapter.name, reason=reason)
    pytest.skip(reason)


def test_attention(bench, bench_session, device, shape, mode, subject):
    def skip(reason):
        bench_session.record_not_timed(impl=subject.name, reason=reason, shape=shape.name, mode=mode, device=device)
        pytest.skip(reason)

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    if subject.source == "--impl":
        failed = bench_session.conformance_failures(subject.adapter)
        if failed:
            skip(f"failed conformance: {', '.join(failed)}")
    torch.manual_seed(0)
    if subject.adapter is None:
        step, layout = bare_sdpa_step(shape, mode, device), "heads"
    else:
        step, layout, why = module_step(subject, shape, mode, device)
        if why:
            skip(f"not claimed: {why}")
    run = synchronized(step, device)

    bench.extra_info.update(
        impl=subject.name, source=subject.source, shape=shape.name, mode=mode, device=device,
        layout=layout, need_weights=subject.need_weights, dtype=str(DTYPE).replace("torch.", ""),
        torch=torch.__version__, torch_num_threads=torch.get_num_threads(),
        **{k: v for k, v in asdict(shape).items() if k != "name"})
    if bench_session.timing:
        run(), run()  # warm-up: first-call allocations and kernel selection stay out of the timings
        if getattr(subject.adapter, "cls", None) is nn.MultiheadAttention:
            bench.extra_info["torch_mha_path"] = torch_mha_path(run)
        if device == "cuda":
            bench.extra_info.update(cuda_memory(run))
        baseline = bench_session.baseline
        if subject is not baseline:
            base_step, _, _ = module_step(baseline, shape, mode, device)
            bench.extra_info["paired_ratio"] = paired_ratio(run, synchronized(base_step, device), bench_session.timer)
    bench(run)


def synchronized(step, device):
    """``step``, waiting for the device to finish on CUDA, so that the timer sees all the work."""
    if device != "cuda":
        return step
    return lambda: (step(), torch.cuda.synchronize())


PAIRED_SECONDS, MIN_PAIRS, MAX_PAIRS = 0.4, 7, 500


def paired_ratio(run, base_run, timer) -> float:
    """Median over rounds of time(run) / time(base_run), the two timed alternately.

    The ratio of two medians from separate tests drifts when other work on the
    machine comes and goes between them; timing both in turn cancels that.
    """
    base_run(), base_run()  # its warm-up
    ratios, start = [], timer()
    while len(ratios) < MIN_PAIRS or (timer() - start < PAIRED_SECONDS and len(ratios) < MAX_PAIRS):
        t0 = timer()
        base_run()
        t1 = timer()
        run()
        t2 = timer()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def module_step(subject, shape, mode, device):
    """The callable to time for an adapter, its layout, and why it cannot run this case ("" if it can)."""
    adapter, caps = subject.adapter, subject.adapter.capabilities
    layout = next((lay for lay in ("batch_first", "seq_first") if lay in caps.layouts), None)
    if layout is None:
        return None, None, "batched input"
    config = Config(shape.E, shape.H, batch_first=layout == "batch_first")
    problem = Problem(config, batch=shape.B, L=shape.L, S=shape.S, dtype=DTYPE,
                      self_attention=shape.self_attention, need_weights=subject.need_weights)
    why = Scope.of(caps, device, (DTYPE,)).excludes(problem) + ([f"device {device}"] if device not in caps.devices else [])
    if why:
        return None, layout, ", ".join(why)
    module = adapter.build(config, dtype=DTYPE, device=device)
    train = mode == "forward+backward"
    module.train(train)  # dropout is 0: train mode only selects torch's slow path, as in training

    def tokens(length):  # (B, length, E) or (length, B, E)
        size = (shape.B, length, shape.E) if config.batch_first else (length, shape.B, shape.E)
        return torch.randn(size, dtype=DTYPE, device=device, requires_grad=train)

    query = tokens(shape.L)
    memory = query if shape.self_attention else tokens(shape.S)  # key is value in both cases
    flags = dict(need_weights=subject.need_weights)
    if not train:
        def step():
            with torch.no_grad():
                return adapter.call(module, query, memory, memory, **flags)
        return step, layout, ""
    grad = torch.randn_like(query)

    def step():
        out, _ = adapter.call(module, query, memory, memory, **flags)
        out.backward(grad)  # gradients accumulate across rounds: the same work every round
    return step, layout, ""


def bare_sdpa_step(shape, mode, device):
    """``F.scaled_dot_product_attention`` on already-projected heads, (B, H, L or S, E/H)."""
    train = mode == "forward+backward"
    hd = shape.E // shape.H

    def heads(length):
        return torch.randn(shape.B, shape.H, length, hd, dtype=DTYPE, device=device, requires_grad=train)

    q, k, v = heads(shape.L), heads(shape.S), heads(shape.S)
    if not train:
        def step():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v)
        return step
    grad = torch.randn_like(q)

    def step():
        F.scaled_dot_product_attention(q, k, v).backward(grad)
    return step


def torch_mha_path(run) -> str:
    """Which path ``nn.MultiheadAttention`` took, read from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    names = {event.name for event in prof.events()}
    return "fast" if "aten::_native_multi_head_attention" in names else "slow"


def cuda_memory(run) -> dict:
    """Peak CUDA memory of one call: in all, and above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    peak = torch.cuda.max_memory_allocated()
    return dict(cuda_peak_memory_bytes=peak, cuda_peak_extra_bytes=peak - before)
