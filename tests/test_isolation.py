"""A module that crashes, hangs or eats memory fails its own laws only, with the right status and problem."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnspec import DropIn
from attnspec.checks import LAWS
from attnspec.isolation import Limits, Supervisor, _Speed, exit_description, start_method
from attnspec.loading import load_impl

from tests.examples import misbehaving

ROOT = Path(__file__).resolve().parents[1]
PADDED = LAWS["masked_keys_get_zero_gradient"]  # every problem it draws has a key padding mask
PLAIN = LAWS["output_matches_reference"]
FAST = Limits(floor=1.0, startup=1.5, short=0.5)


def certify(supervisor, cls, law, **options):
    return supervisor.run_law(law, DropIn(cls), dtype=torch.float64, **options)


@pytest.fixture(scope="module")
def supervisor():
    with Supervisor(Limits(startup=30.0), max_memory=2) as sup:
        yield sup


def test_children_are_forked_from_pytest_where_cuda_cannot_be_used():
    expected = "fork" if sys.platform.startswith("linux") and not torch.cuda.is_available() else "forkserver"
    assert start_method() == expected
    with pytest.raises(ValueError, match="start_method='threads', but should be one of"):
        Supervisor(start_method="threads")


def crashes_then_recovers(supervisor, cls, signal):
    """``cls`` crashes its law with ``signal``, naming the problem; the next law passes in a fresh process."""
    result = supervisor.run_law(PADDED, DropIn(cls), dtype=torch.float64)
    assert result.status == "crashed", result.message
    assert signal in result.message and "\n  problem: " in result.message and "\n  reproduce: " in result.message
    assert result.problem is not None and result.problem["key_padding_mask_kind"] is not None
    assert "misbehave" in result.message  # faulthandler's stack of the dying process shows where
    after = supervisor.run_law(PLAIN, load_impl("attnspec.impls.sdpa:SDPA"), dtype=torch.float64, max_examples=5)
    assert after.status == "pass", after.message


@pytest.mark.parametrize("cls, signal", [(misbehaving.Aborts, "SIGABRT"), (misbehaving.Segfaults, "SIGSEGV")])
def test_a_crash_fails_that_law_names_the_signal_and_the_problem(supervisor, cls, signal):
    crashes_then_recovers(supervisor, cls, signal)


def test_the_fork_server_used_where_cuda_can_be_replaces_a_crashed_child_too():
    """Where CUDA can be used, children come from a fork server (CI has no GPU: this is its check here)."""
    with Supervisor(Limits(startup=30.0), start_method="forkserver") as sup:
        crashes_then_recovers(sup, misbehaving.Segfaults, "SIGSEGV")
        assert sup.context.get_start_method() == "forkserver"


def test_a_cpp_error_is_a_failure_with_its_problem(supervisor):
    result = certify(supervisor, misbehaving.RaisesCppError, PADDED, max_examples=5)
    assert result.status == "fail" and "RuntimeError" in result.message and "is invalid for input" in result.message


def test_running_out_of_memory_is_a_crash_and_the_process_is_replaced(supervisor):
    result = certify(supervisor, misbehaving.EatsMemory, PADDED, max_examples=3, shrink=False)
    assert result.status == "crashed", result.message
    assert "out of memory" in result.message
    assert supervisor.child is None  # replaced before the next law


@pytest.mark.parametrize("cls", [misbehaving.Deadlocks, misbehaving.SpinsForever])
def test_a_hang_is_stopped_then_limits_shrink_then_laws_are_not_run(cls):
    with Supervisor(FAST) as sup:
        first = certify(sup, cls, PADDED)
        assert first.status == "hung", first.message
        assert "did not finish within" in first.message and first.problem is not None
        assert first.problem["key_padding_mask_kind"] is not None
        assert "misbehave" in first.message  # the hung process's stack, dumped before it was stopped
        second = certify(sup, cls, PADDED)
        assert second.status == "hung" and "short limit" in second.message
        assert certify(sup, cls, PADDED).status == "hung"
        last = certify(sup, cls, PLAIN)
        assert last.status == "not run" and "hung in 3 earlier laws" in last.message


def test_a_module_that_hangs_on_every_call_costs_a_few_limits(supervisor):
    with Supervisor(Limits(timeout=1.0)) as sup:
        statuses = [certify(sup, misbehaving.AlwaysDeadlocks, law).status for law in list(LAWS.values())[:6]]
    assert statuses == ["hung"] * 3 + ["not run"] * 3


def test_limits_are_validated():
    with pytest.raises(ValueError, match="attnspec-timeout -1"):
        Limits(timeout=-1)
    with pytest.raises(ValueError, match=r"floor=0"):
        Limits(floor=0)
    with pytest.raises(ValueError, match="attnspec-max-memory"):
        Supervisor(max_memory=-2)


def test_exit_descriptions():
    assert exit_description(-11) == "SIGSEGV (signal 11)"
    assert exit_description(3) == "exit code 3"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_run_from_an_empty_folder_survives_every_misbehaviour(tmp_path, workers):
    """pytest from an empty folder, with and without xdist: each module gets its status; a correct one passes."""
    names = ["Aborts", "Segfaults", "Deadlocks"] + (["RaisesCppError", "EatsMemory"] if workers == "0" else [])
    impls = [arg for n in names for arg in ("--impl", f"tests.examples.misbehaving:{n}")]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATTNSPEC_"))},
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "attnspec.suite", "-n", workers,
         *impls, "--impl", "attnspec.impls.sdpa:SDPA", "--attnspec-devices", "cpu", "--attnspec-timeout", "3",
         "--attnspec-max-memory", "2", "--attnspec-report", "report.json",
         "-k", "float64 and (output_matches_reference or masked_keys_get_zero_gradient)",
         "-p", "no:benchmark"],  # pytest-benchmark, a test tool here (not a dependency), makes .benchmarks/
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())["implementations"]
    status = {name.rsplit(":", 1)[-1]: {law: r["status"] for law, r in entry["verdicts"]["cpu"]["float64"].items()}
              for name, entry in report.items()}
    law = "masked_keys_get_zero_gradient"
    assert status["Aborts"][law] == status["Segfaults"][law] == "crashed" and status["Deadlocks"][law] == "hung", status
    if workers == "0":  # (the slower two once: with xdist they take the same path)
        assert status["EatsMemory"][law] == "crashed" and status["RaisesCppError"][law] == "fail", status
    assert set(status["sdpa"].values()) == {"pass"}, status
    verdicts = {name.rsplit(":", 1)[-1]: entry["result"] for name, entry in report.items()}
    assert verdicts["Aborts"] == "CRASHED" and verdicts["sdpa"] == "PASS", verdicts
    assert "CRASHED" in run.stdout and "HUNG" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".hypothesis") == ["report.json"]  # nothing else



def make_unpicklable():
    """An adapter whose class is made at run time (as attnspec.impls.sdpa_kernels does): pickle cannot name it."""
    cls = type("MadeAtRunTime", (DropIn,), {})
    return cls(misbehaving.ZooMHA, name="made-at-run-time")


def test_an_unpicklable_adapter_is_loaded_in_the_child_by_its_loader():
    adapter = make_unpicklable()
    with Supervisor() as sup:
        refused = sup.run_law(PLAIN, adapter, dtype=torch.float64, max_examples=3)
        assert refused.status == "error" and "pickling it raised" in refused.message
        sup.loaders[adapter.name] = make_unpicklable  # what the plugin records for entry points and --impl values
        loaded = sup.run_law(PLAIN, adapter, dtype=torch.float64, max_examples=3)
    assert loaded.status == "pass", loaded.message


def load_after_a_parallel_region():
    """A loader that multiplies large matrices in the child before any law runs (an import that builds a model)."""
    big = torch.randn(1500, 1500)
    big @ big
    return make_unpicklable()


def test_a_forked_child_is_not_hung_by_the_thread_pool_it_did_not_inherit():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        big = torch.randn(1500, 1500)
        big @ big  # the parent's OpenMP thread pool now exists; a fork copies none of its threads
        adapter = make_unpicklable()
        with Supervisor(Limits(startup=20.0), start_method="fork") as sup:
            sup.loaders[adapter.name] = load_after_a_parallel_region
            result = sup.run_law(PLAIN, adapter, dtype=torch.float64, max_examples=3)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "pass", result.message


def test_statistics_per_law_on_request(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATTNSPEC_"))},
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "--pyargs",
         "attnspec.suite", "-n", "0", "--impl", "attnspec.impls.sdpa:SDPA", "--attnspec-devices", "cpu",
         "--hypothesis-show-statistics", "-k", "output_matches_reference"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "sdpa f64 output_matches_reference: 25 examples, 25 compared" in run.stdout
    assert "sdpa bf16 output_matches_reference: 10 examples" in run.stdout


@pytest.mark.parametrize("timeout, typical, expected", [
    (None, [], 2.0), (None, [0.5], 10.0),  # the short limit: 2 s, or 20 typical examples
    (5.0, [], 2.0),  # after a hang, --attnspec-timeout is not given again in full...
    (1.0, [], 1.0),  # ...nor exceeded
])
def test_after_a_hang_the_limit_is_short_even_with_a_timeout(timeout, typical, expected):
    speed = _Speed(times=list(typical), hung=["a law (cpu, float64)"])
    assert speed.limit(Limits(timeout=timeout), first_in_child=False)[0] == expected
