"""Each law runs in a child process, so a crash or a hang of the implementation fails that law only.

    >>> with Supervisor() as supervisor:
    ...     result = supervisor.run_law(LAWS["output_matches_reference"], adapter, device="cpu", dtype=torch.float32)
    >>> result.status   # "pass", "fail", ..., "crashed" (a signal, an abort, a CUDA error, out of memory) or "hung"

One child serves the laws of a pytest process in turn, so replacing a dead child costs
milliseconds, not an import of torch. It is forked (:func:`start_method`):

- where CUDA can be used, from a server that has imported torch and attnspec but never touched
  CUDA (``multiprocessing``'s ``forkserver``; ``spawn`` where there is none): a CUDA context
  does not survive a fork;
- elsewhere on Linux, from the pytest process itself, which has imported torch already (``fork``).
  That saves each pytest-xdist worker a second import of torch. A forked child runs torch on
  one thread: OpenMP's thread pool does not survive a fork either, and a parallel region
  in the child would wait on threads that it does not have.

The child reports each example before it runs it: when the child dies, or an example outlives
its limit, the parent knows the exact problem that was running, and the repro snippet replays it.

Limits (:class:`Limits`). An example may take ``max(floor, factor x typical)``, where
*typical* is the median time of the examples this implementation has completed (the first
example in a fresh child gets ``startup`` instead: imports, compilation, warm-up), unless
``--attnspec-timeout`` fixes it. After a hang, the implementation's examples get the short
limit; after ``max_hangs`` hangs its remaining laws are not run, and say why.
"""
from __future__ import annotations

import copy
import faulthandler
import multiprocessing
import os
import pickle
import signal
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from .repro import repro_snippet
from .requirements import dtype_name
from .runner import run_law, unrun

# what a message says when the process it ran in can no longer be trusted with the next law
POISONED = {
    "CUDA error": "a CUDA error", "device-side assert": "a CUDA device-side assert",
    "illegal memory access": "a CUDA illegal memory access", "CUBLAS_STATUS": "a cuBLAS error",
    "cuDNN error": "a cuDNN error", "out of memory": "out of memory", "can't allocate memory": "out of memory",
    "MemoryError": "out of memory", "OutOfMemoryError": "out of memory",
}


@dataclass(frozen=True)
class Limits:
    """How long one example may run before it counts as hung (seconds)."""

    timeout: float | None = None  # --attnspec-timeout: fixes the limit of every example
    floor: float = 10.0  # the least limit derived from the implementation's speed
    factor: float = 200.0  # ... times its typical example
    startup: float = 60.0  # the first example in a fresh child, and loading the implementation there
    short: float = 2.0  # the least limit once the implementation has hung
    max_hangs: int = 3  # hangs after which its remaining laws are not run

    def __post_init__(self):
        for name in ("floor", "factor", "startup", "short"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Limits({name}={value!r}): expected a positive number of seconds")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(f"--attnspec-timeout {self.timeout!r}: expected a positive number of seconds")
        if not (isinstance(self.max_hangs, int) and self.max_hangs >= 1):
            raise ValueError(f"Limits(max_hangs={self.max_hangs!r}): expected an integer >= 1")


@dataclass
class _Speed:
    """What the parent knows of one implementation's speed and hangs."""

    times: list = field(default_factory=list)  # seconds per completed example (the first 64)
    hung: list = field(default_factory=list)  # "law (device, dtype)" of each hang

    def limit(self, limits: Limits, first_in_child: bool) -> tuple[float, str]:
        """Seconds the next example may take, and the rule that says so."""
        typical = statistics.median(self.times) if self.times else None
        if self.hung:  # never the full limit again, --attnspec-timeout's included
            short = max(limits.short, 20 * typical if typical else 0)
            if limits.timeout is None or short < limits.timeout:
                return short, "the short limit, since it has hung before"
        if limits.timeout is not None:
            return limits.timeout, "--attnspec-timeout"
        if first_in_child or typical is None:
            return max(limits.startup, limits.factor * (typical or 0)), "the first example in a fresh process"
        return (max(limits.floor, limits.factor * typical),
                f"{limits.factor:g} x its typical example ({typical * 1e3:.3g} ms), at least {limits.floor:g} s")


class _Child:
    """One child process and the pipe to it; its stderr goes to a log file the parent reads after a crash."""

    def __init__(self, context, max_memory: float | None):
        self.log = tempfile.NamedTemporaryFile(prefix="attnspec-child-", suffix=".log", delete=False)
        self.conn, child_conn = context.Pipe()
        forked = context.get_start_method() == "fork"
        self.process = context.Process(target=serve, args=(child_conn, self.log.name, max_memory, forked),
                                       name="attnspec-law", daemon=True)
        with warnings.catch_warnings():  # Python 3.12 warns of fork() beside other threads (pytest-xdist's);
            warnings.simplefilter("ignore", DeprecationWarning)  # the child touches none of their locks
            self.process.start()
        child_conn.close()
        self.examples = 0  # examples completed in this child

    def log_from(self, offset: int) -> str:
        """The child's stderr since ``offset``, its first 16 lines (faulthandler prints the innermost frame first)."""
        try:
            with open(self.log.name, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[:16])

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log.name)
        except OSError:
            return 0

    def dump_stacks(self) -> None:
        """Ask a hung child where it is (faulthandler prints every thread's stack to its log)."""
        if hasattr(signal, "SIGUSR1") and self.process.is_alive():
            try:
                os.kill(self.process.pid, signal.SIGUSR1)
                time.sleep(0.3)
            except OSError:
                pass

    def stop(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def start_method() -> str:
    """``fork`` on Linux where CUDA cannot be used; else ``forkserver`` (``spawn`` where there is none)."""
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods:
        import torch
        if not torch.cuda.is_available():
            return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def exit_description(code: int | None) -> str:
    """'SIGSEGV (signal 11)' for a child killed by a signal, 'exit code 3' for one that exited."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"{signal.Signals(-code).name} (signal {-code})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Runs laws in a child process, replacing it after a crash or a hang (see the module docstring)."""

    def __init__(self, limits: Limits | None = None, *, start_method: str | None = None,
                 max_memory: float | None = None):
        if max_memory is not None and not (isinstance(max_memory, (int, float)) and max_memory > 0):
            raise ValueError(f"--attnspec-max-memory {max_memory!r}: expected a positive number of GiB")
        self.limits = limits or Limits()
        if start_method not in (None, *multiprocessing.get_all_start_methods()):
            raise ValueError(f"start_method={start_method!r}, but should be one of "
                             f"{multiprocessing.get_all_start_methods()}")
        self.method, self._context = start_method, None
        self.max_memory = max_memory
        self.child: _Child | None = None
        self.speed: dict[str, _Speed] = {}
        self.loaders: dict = {}  # implementation name -> a picklable function that loads it (for unpicklable adapters)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def context(self):
        """The ``multiprocessing`` context the children start from (:func:`start_method`, chosen on first use)."""
        if self._context is None:
            self.method = self.method or start_method()
            self._context = multiprocessing.get_context(self.method)
            if self.method == "forkserver":  # the server imports torch and attnspec once; each child is a fork of it
                self._context.set_forkserver_preload([__name__])
        return self._context

    def warm_up(self) -> None:
        """Launch the fork server now, if there is one, so it imports torch while pytest collects."""
        if self.context.get_start_method() == "forkserver":
            from multiprocessing import forkserver
            forkserver.ensure_running()

    def start(self) -> None:
        """Start the child now, rather than at the first law."""
        if self.child is None or not self.child.process.is_alive():
            if self.child is not None:
                self.child.stop()
            self.child = _Child(self.context, self.max_memory)

    def run_law(self, law, adapter, *, device: str = "cpu", dtype=None, **options):
        """:func:`attnspec.runner.run_law` in the child: its :class:`~attnspec.verdict.Verdict`, or ``crashed``,
        ``hung`` or ``not run`` if it could not finish."""
        speed = self.speed.setdefault(adapter.name, _Speed())
        if len(speed.hung) >= self.limits.max_hangs:
            return unrun(law, adapter, device, dtype, "not run",
                         f"{adapter.name} hung in {len(speed.hung)} earlier laws ({'; '.join(speed.hung)}), so its "
                         "remaining laws are not run")
        try:
            payload = pickle.dumps(({"adapter": adapter}, law.name, device, dtype, options))
        except Exception as exc:  # e.g. a class made at run time: the child loads it as pytest did, by reference
            try:
                how = {"loader": self.loaders[adapter.name], "capabilities": adapter.capabilities}
                payload = pickle.dumps((how, law.name, device, dtype, options))
            except Exception:
                return unrun(law, adapter, device, dtype, "error",
                             f"cannot hand {adapter.name!r} to the child process that runs each law: pickling it "
                             f"raised {type(exc).__name__}: {exc}. Define the adapter at module level of an "
                             "importable module, or pass --attnspec-isolation=none")
        self.start()
        child, start, problem = self.child, time.perf_counter(), None
        offset, last = child.log_size(), time.perf_counter()
        child.conn.send_bytes(payload)
        limit, why = (self.limits.startup, "loading the implementation") if self.limits.timeout is None \
            else (self.limits.timeout, "--attnspec-timeout")
        while True:
            waited = time.perf_counter() - last
            try:
                ready = child.conn.poll(max(0.0, limit - waited))
                message = child.conn.recv() if ready else None
            except (EOFError, OSError):
                child.process.join(5)
                what = exit_description(child.process.exitcode)
                result = self._lost(law, adapter, device, dtype, start, problem, "crashed",
                                    f"the process running it died ({what})", child.log_from(offset))
                break
            if message is None:  # the example outlived its limit
                child.dump_stacks()
                where = f"{law.name} ({device}, {dtype_name(dtype) if dtype is not None else 'dtypes drawn'})"
                speed.hung.append(where)
                result = self._lost(law, adapter, device, dtype, start, problem, "hung",
                                    f"an example did not finish within {limit:.3g} s ({why}"
                                    f"{'' if why.startswith('--') else '; --attnspec-timeout sets it'}); "
                                    f"the process was stopped", child.log_from(offset))
                break
            kind, body = message
            now = time.perf_counter()
            if kind == "example":
                if problem is not None:  # the previous example finished
                    child.examples += 1
                    if len(speed.times) < 64:
                        speed.times.append(now - last)
                problem, last = body, now
                limit, why = speed.limit(self.limits, first_in_child=child.examples == 0)
                continue
            if problem is not None:
                child.examples += 1
            if kind == "error":
                return unrun(law, adapter, device, dtype, "error", body, seconds=now - start)
            result = body
            poisoned = next((why for marker, why in POISONED.items() if marker in result.detail), None)
            if kind == "result" and poisoned and result.status in ("fail", "error"):
                result = result.replace(status="crashed",
                                        detail=f"{poisoned}; the process that ran it was replaced so that later laws "
                                               f"start clean\n{result.detail}")
                self.close()
            return result
        self.close()
        return result

    @staticmethod
    def _lost(law, adapter, device, dtype, start, problem, status, what, log):
        tail = "\nits last output:\n" + "\n".join("  " + line for line in log.splitlines()) if log else ""
        running = {} if problem is None else dict(problem=problem.to_dict(), problem_text=problem.short(),
                                                   repro=repro_snippet(adapter, law.name, problem, device))
        where = "" if problem is not None else "\nwhile loading the implementation (before any example)"
        return unrun(law, adapter, device, dtype, status, f"{what}{where}{tail}", seconds=time.perf_counter() - start,
                     **running)


def serve(conn, log_path: str, max_memory: float | None, forked: bool = False) -> None:
    """The child: run each law it is sent, reporting every example before running it."""
    if forked:  # the parent's OpenMP threads are not here: one thread, or a parallel region waits forever
        import torch
        torch.set_num_threads(1)
    log = open(log_path, "ab", buffering=0)
    os.dup2(log.fileno(), 2)  # C-level errors and faulthandler's dumps go to the log the parent reads
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    faulthandler.enable()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if max_memory is not None:
        import resource
        limit = int(max_memory * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from .checks import LAWS
    loaded = {}  # what each loader returned (a loader may import a large package)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            how, name, device, dtype, options = pickle.loads(payload)
            adapter = how.get("adapter") or _load(loaded, how["loader"], how["capabilities"])
        except Exception as exc:
            conn.send(("error", f"the child process cannot load the implementation: {type(exc).__name__}: {exc}"))
            continue
        result = run_law(LAWS[name], adapter, device=device, dtype=dtype,
                         before_example=lambda problem: conn.send(("example", problem)), **options)
        if device.startswith("cuda") and result.status not in ("skipped", "not claimed"):
            try:
                import torch
                torch.cuda.synchronize()
            except Exception as exc:  # an asynchronous CUDA error surfaces here
                result = result.replace(status="error", detail=f"{result.detail}\nCUDA error after the law: {exc}")
        conn.send(("result", result))


def _load(loaded: dict, loader, capabilities):
    """The adapter ``loader()`` returns (once per child), with the capabilities the parent gave it."""
    key = pickle.dumps(loader)
    if key not in loaded:
        loaded[key] = loader()
    adapter = loaded[key]
    if adapter.capabilities != capabilities:  # deviations added from an --attnspec-deviations file
        adapter = copy.copy(adapter)
        adapter.capabilities = capabilities
    return adapter
