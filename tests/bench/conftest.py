"""Benchmark plumbing: the shape table, what is measured, when it is timed, what the JSON records.

The benchmarks time only in their own run (pytest-benchmark switches itself off
under xdist); see ``test_bench.py`` for the command. Anywhere else (``pytest``,
``pytest -n 2``) each case calls its function once, untimed, on one small shape.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from attnspec.adapter import DropIn
from attnspec.capabilities import Capabilities


@dataclass(frozen=True)
class Shape:
    """One row of the table: batch B, query length L, key length S, embed_dim E, heads H."""

    name: str
    B: int
    L: int
    S: int
    E: int
    H: int
    self_attention: bool = True  # query is key is value; otherwise key is value (an encoder memory)
    scaling: bool = False  # a point of the time-vs-length plot: B=1, E=128, H=4, L=S


SHAPES = (
    Shape("decode-step", B=8, L=1, S=1024, E=256, H=8, self_attention=False),
    Shape("long-sequence", B=1, L=1024, S=1024, E=128, H=4, scaling=True),
    Shape("many-heads", B=4, L=128, S=128, E=512, H=32),
    Shape("cross-attention", B=4, L=64, S=256, E=256, H=8, self_attention=False),
    Shape("batch-heavy", B=256, L=16, S=16, E=128, H=4),
    Shape("seq-64", B=1, L=64, S=64, E=128, H=4, scaling=True),
    Shape("seq-128", B=1, L=128, S=128, E=128, H=4, scaling=True),
    Shape("seq-256", B=1, L=256, S=256, E=128, H=4, scaling=True),
    Shape("seq-512", B=1, L=512, S=512, E=128, H=4, scaling=True),
)
SMOKE_SHAPE = "seq-64"  # the one shape an untimed (normal) test run touches
MODES = ("forward", "forward+backward")
DEVICES = ("cpu", "cuda")

TORCH_MHA = DropIn(nn.MultiheadAttention, name="torch.nn.MultiheadAttention", capabilities=Capabilities())


@dataclass(frozen=True)
class Subject:
    """Something timed: an adapter called with ``need_weights``, or the bare SDPA kernel (no adapter)."""

    name: str
    adapter: object = None
    need_weights: bool = False
    source: str = "bundled"  # "bundled", "--impl" or "baseline"


BASELINES = (  # the ratios are to BASELINES[1]
    Subject("torch-mha(need_weights=True)", TORCH_MHA, need_weights=True, source="baseline"),
    Subject("torch-mha(need_weights=False)", TORCH_MHA, source="baseline"),
    Subject("F.scaled_dot_product_attention", source="baseline"),
)


def timing(config) -> bool:
    """True in a benchmark run: ``--benchmark-only`` or ``--benchmark-enable``, and not under xdist."""
    if not config.pluginmanager.hasplugin("benchmark") or hasattr(config, "workerinput"):
        return False
    return bool(config.getoption("benchmark_only") or config.getoption("benchmark_enable"))


def bundled() -> list:
    """``attnspec.impls.BUNDLED`` without torch's own module, which is measured as the baselines."""
    try:
        from attnspec.impls import BUNDLED
    except ImportError:  # impls/__init__.py not there yet: ours only
        from attnspec.impls.sdpa import SDPA
        BUNDLED = [SDPA]
    return [a for a in BUNDLED if getattr(a, "cls", None) is not nn.MultiheadAttention]


def known_bad() -> list:
    try:
        from attnspec.impls import KNOWN_BAD
    except ImportError:
        return []
    return list(KNOWN_BAD)


def command_line_impls(config) -> list:
    """Adapters given with ``--impl`` (an option of the spec plugin), in order."""
    values = config.getoption("--impl", default=None)  # None when the spec plugin is not loaded
    if not values:
        return []
    from attnspec.loading import load_impl

    return [v if hasattr(v, "build") else load_impl(v) for v in ([values] if isinstance(values, str) else values)]


class BenchSession:
    """Per-run state: what was not timed and why, and the conformance verdicts of ``--impl`` modules."""

    QUICK_EXAMPLES = 10  # hypothesis examples per law in the pre-benchmark conformance check

    def __init__(self, config):
        self.timing = timing(config)
        self.timer = time.perf_counter  # the clock of the paired ratios: pytest-benchmark's (--benchmark-timer)
        if self.timing:
            module, name = str(config.getoption("benchmark_timer")).rsplit(".", 1)  # e.g. "time.process_time"
            self.timer = getattr(importlib.import_module(module), name)
        self.baseline = BASELINES[1]
        ours = sorted(bundled(), key=lambda a: a.name != "sdpa")  # timed right after its baseline
        subjects = [BASELINES[1], *(Subject(a.name, a) for a in ours)]
        if self.timing:  # a normal run certifies --impl modules in the main suite; only a benchmark run times them
            subjects += [Subject(a.name, a, source="--impl") for a in command_line_impls(config)]
        self.subjects = {s.name: s for s in [*subjects, BASELINES[0], BASELINES[2]]}
        self.not_timed: list[dict] = []
        self._failures: dict[str, list[str]] = {}

    def record_not_timed(self, *, impl, reason, shape=None, mode=None, device=None):
        self.not_timed.append(dict(impl=impl, reason=reason, shape=shape, mode=mode, device=device))

    def conformance_failures(self, adapter) -> list[str]:
        """Laws that ``adapter`` fails or errors on in a quick ``attnspec.runner.certify`` run (cached)."""
        if adapter.name not in self._failures:
            try:
                from attnspec.runner import certify
            except ImportError as exc:
                self._failures[adapter.name] = [f"cannot certify ({exc})"]
                return self._failures[adapter.name]
            from hypothesis import settings

            wanted = dict(device="cpu", max_examples=self.QUICK_EXAMPLES)
            accepted = inspect.signature(certify).parameters
            threads = torch.get_num_threads()  # certify runs single-threaded; the benchmarks must not
            profile = settings.get_current_profile_name()
            if profile == "default":  # hypothesis' 200 ms deadline fails slow examples: use the suite's profile
                settings.load_profile("attnspec")
            try:
                results = certify(adapter, **{k: v for k, v in wanted.items() if k in accepted})
            finally:
                torch.set_num_threads(threads)
                settings.load_profile(profile)
            self._failures[adapter.name] = [r.law for r in results if r.status in ("fail", "error")]
        return self._failures[adapter.name]


SESSION = pytest.StashKey[BenchSession]()


def pytest_configure(config):
    config.stash[SESSION] = BenchSession(config)
    json_path = config.getoption("benchmark_json", None)  # pytest-benchmark writes it at the end, into a folder
    if json_path and not hasattr(config, "workerinput"):  # that must exist: .benchmarks/ is not in a fresh clone
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(json_path))), exist_ok=True)
    if not config.pluginmanager.hasplugin("benchmark"):  # keep --strict-markers happy; the cases skip
        config.addinivalue_line("markers", "benchmark: pytest-benchmark settings (plugin not active).")


def pytest_generate_tests(metafunc):
    """Cases in run order: device, shape, mode, then implementation, so neighbours are compared."""
    if "bad" in metafunc.fixturenames:
        bad = known_bad()
        metafunc.parametrize("bad", bad, ids=[b.adapter.name for b in bad])
    if "subject" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION]
    shapes = SHAPES if session.timing else [s for s in SHAPES if s.name == SMOKE_SHAPE]
    # Each case names its whole group (pytest-benchmark's default --benchmark-group-by=group): one table per
    # device, shape and pass. Grouping by a parameter instead (param:mode) fails the session for the
    # benchmarks of test_certify_bench.py, which have no such parameter.
    params = [pytest.param(device, shape.name, mode, impl, id=f"{device}-{shape.name}-{mode}-{impl}",
                           marks=pytest.mark.benchmark(group=f"{device} {shape.name} {mode}"))
              for device in DEVICES for shape in shapes for mode in MODES for impl in session.subjects]
    # plain strings as parameters, so that pytest-benchmark's JSON records them
    metafunc.parametrize(("device", "shape", "mode", "subject"), params, indirect=["shape", "subject"])


@pytest.fixture
def shape(request) -> Shape:
    return next(s for s in SHAPES if s.name == request.param)


@pytest.fixture
def subject(request, bench_session) -> Subject:
    return bench_session.subjects[request.param]


def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.hasplugin("benchmark"):
        return
    skip = pytest.mark.skip(reason="pytest-benchmark is not active (pip install pytest-benchmark)")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_session(pytestconfig) -> BenchSession:
    return pytestconfig.stash[SESSION]


@pytest.fixture
def bench(benchmark, request):
    """The ``benchmark`` fixture; outside a benchmark run it calls the function once, untimed."""
    if not timing(request.config):
        benchmark.disabled = True
    return benchmark


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook; it may be absent
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # pytest-benchmark's hook; it may be absent
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """pytest-benchmark's own grouping, except that a benchmark without a parameter named in
    ``--benchmark-group-by`` (``param:mode``: the certification benchmarks have no ``mode``) is grouped by
    the rest of it, where pytest-benchmark raises KeyError and fails the session after every benchmark ran."""
    from pytest_benchmark.plugin import pytest_benchmark_group_stats as by_group

    subsets = {}  # the group_by each benchmark can take -> its benchmarks
    for bench in benchmarks:
        params = bench["params"] or {}
        mine = [g for g in group_by.split(",") if not g.startswith("param:") or g[len("param:"):] in params]
        subsets.setdefault(",".join(mine) or "group", []).append(bench)
    groups = {}
    for subset_group_by, subset in subsets.items():
        for name, grouped in by_group(config=config, benchmarks=subset, group_by=subset_group_by):
            groups.setdefault(name, []).extend(grouped)
    return sorted(groups.items(), key=lambda pair: pair[0] or "")


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # they set torch's thread count: part of the command


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook; it may be absent
def pytest_benchmark_update_json(config, benchmarks, output_json):
    env = [f"{name}={os.environ[name]}" for name in THREAD_ENV if name in os.environ]
    output_json["attnspec"] = dict(
        command=" ".join([*env, "python -m pytest", *config.invocation_params.args]),
        python=sys.version.split()[0],
        torch=torch.__version__,
        torch_num_threads=torch.get_num_threads(),
        not_timed=config.stash[SESSION].not_timed,
    )
