"""The attnspec pytest plugin: choose implementations, parametrise the suite, report the verdict.

Options (group ``attnspec``, every one prefixed ``--attnspec-``; ``docs/options.md`` lists them):

* ``--attnspec-impl pkg.module:Thing`` (also ``--impl``; repeatable; or ``ATTNSPEC_IMPL=a:B,c:D``): certify
  only these. Without it: every implementation registered under the ``attnspec.impls`` entry-point
  group (attnspec's bundled ones included; third-party ones whose package is absent show
  as one skip each).
* ``--attnspec-report PATH``: write the results as JSON (also ``--conformance-report``);
  ``--attnspec-markdown PATH`` as Markdown; ``--attnspec-html PATH`` as one self-contained HTML page.
  Other plugins may add to the JSON report with the ``pytest_attnspec_report`` hook (:mod:`attnspec.hooks`).
* ``--attnspec-devices cpu,cuda``: devices to certify on (CUDA cases skip without CUDA).
  Each law runs once per device and dtype: float64, float32 and bfloat16 everywhere,
  float16 on CUDA (:data:`attnspec.strategies.DEVICE_DTYPES`).
* ``--attnspec-deviations FILE``: known deviations kept outside the code (TOML, keyed by ``--impl``).
* ``--attnspec-timeout SECONDS``: time limit for one example (default: derived from the implementation's speed);
  ``--attnspec-isolation process|none``: each law in a child process (default), or in pytest's own;
  ``--attnspec-max-memory GIB``: cap the memory of that process (see :mod:`attnspec.isolation`).
* ``--attnspec-reach heads=16,length=128``: draw larger configurations (:class:`attnspec.Reach`).
* ``--attnspec-gpus per-worker|all``: under ``pytest -n N`` each worker keeps one GPU of the host's (its worker
  id modulo their number; :mod:`attnspec.gpus`), or every worker sees them all.
"""
from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest

from .repro import adapter_origin
from .vocabulary import NO_CUDA

# Everything else of attnspec (torch, Hypothesis, the laws) is imported inside the hooks that need it:
# this module loads in every pytest session of an environment where attnspec is installed.

ENTRY_POINT_GROUP = "attnspec.impls"
ENV_VAR = "ATTNSPEC_IMPL"
SEP = "|"


def pytest_addhooks(pluginmanager):
    from . import hooks
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser):
    group = parser.getgroup("attnspec", "attnspec: attention conformance")
    group.addoption("--attnspec-impl", "--impl", action="append", dest="attnspec_impl", metavar="PKG.MODULE:NAME",
                    default=[], help="certify this implementation (an nn.MultiheadAttention drop-in class or an "
                    f"adapter); repeatable. Default: ${ENV_VAR}, else the bundled and entry-point implementations.")
    group.addoption("--attnspec-report", "--conformance-report", dest="attnspec_report", metavar="PATH",
                    default=None, help="write the conformance results as JSON to PATH. Default: %(default)r")
    group.addoption("--attnspec-markdown", "--conformance-markdown", dest="attnspec_markdown", metavar="PATH",
                    default=None, help="write the conformance matrix and findings as Markdown to PATH. "
                    "Default: %(default)r")
    group.addoption("--attnspec-html", "--conformance-html", dest="attnspec_html", metavar="PATH", default=None,
                    help="write a self-contained HTML report (the matrix coloured by status, each finding with "
                         "its message and repro) to PATH. Default: %(default)r")
    group.addoption("--attnspec-devices", dest="attnspec_devices", metavar="LIST", default="cpu,cuda",
                    help="comma-separated devices to certify on (each in all its dtypes; -k float32 picks one). "
                         "Default: %(default)r")
    group.addoption("--attnspec-deviations", dest="attnspec_deviations", metavar="FILE", default=None,
                    help="TOML file of known deviations, as arrays of tables keyed by the --attnspec-impl value (or "
                         "the implementation's name): [[\"pkg.mod:Cls\"]] law=..., when={...}, match=..., reason=...")
    group.addoption("--attnspec-timeout", dest="attnspec_timeout", metavar="SECONDS", type=float, default=None,
                    help="time limit for one example of a law; an example that runs longer is stopped and the law "
                         "reported as hung. Default: derived from the implementation's own speed "
                         "(see attnspec.isolation.Limits)")
    group.addoption("--attnspec-isolation", dest="attnspec_isolation", choices=("process", "none"), default="process",
                    help="'process': run each law in a child process, so that a crash or a hang fails that law "
                         "only; 'none': run in pytest's own process (for a debugger). Default: %(default)r")
    group.addoption("--attnspec-reach", dest="attnspec_reach", metavar="LIMITS", default=None,
                    help="how far the draws go for every implementation, e.g. 'heads=16,head_dim=64,length=128' "
                         "(the most heads, the widest head, the longest sequence drawn; each costs time). Default: "
                         "each implementation's declared Capabilities.reach (heads=8, head_dim=4, length=33)")
    group.addoption("--attnspec-gpus", dest="attnspec_gpus", choices=("per-worker", "all"), default="per-worker",
                    help="'per-worker': under pytest-xdist, worker gw<i> keeps GPU i mod G of the host's G "
                         "(CUDA_VISIBLE_DEVICES), so that N workers certify on N GPUs; 'all': every worker sees every "
                         "GPU. Default: %(default)r")
    group.addoption("--attnspec-max-memory", dest="attnspec_max_memory", metavar="GIB", type=float, default=None,
                    help="cap the address space of the process that runs the laws (CPU only: CUDA needs more "
                         "address space than it uses); a law that runs out is reported as crashed. "
                         "Default: no cap")


def _requested(config) -> list[str]:
    values = list(config.getoption("attnspec_impl") or [])
    if not values and os.environ.get(ENV_VAR, "").strip():
        values = [v.strip() for v in os.environ[ENV_VAR].replace(" ", ",").split(",") if v.strip()]
    return values


def _entry_point_impls(only: str | None = None) -> tuple[list, list[tuple[str, str]], dict]:
    """Adapters registered in the ``attnspec.impls`` entry-point group, (name, why) of those unavailable, and
    {name: loader}, how a child process loads each again (:func:`entry_point_adapter`). ``only``: one entry point.

    An entry point names an adapter, an ``nn.MultiheadAttention`` drop-in class, a list of either,
    or a function returning such a list; a list may hold :class:`attnspec.Unavailable` entries (a
    package that is not installed), which show as one skip each. attnspec's own bundled
    implementations register here like anyone else's.
    """
    from .adapter import Unavailable
    from .errors import AdapterError
    from .loading import ImplLoadError, as_adapter
    found, absent, loaders = [], [], {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if only is not None and ep.name != only:
            continue
        where = f"entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r}"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "build"):
                obj = obj()
            for item in obj if isinstance(obj, (list, tuple)) else [obj]:
                if isinstance(item, Unavailable):
                    absent.append((item.name, item.reason))
                else:
                    found.append(as_adapter(item, where))
                    loaders[found[-1].name] = functools.partial(entry_point_adapter, ep.name, found[-1].name)
        except (ImplLoadError, AdapterError) as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
        except Exception as exc:
            raise pytest.UsageError(f"{where}: loading it raised {type(exc).__name__}: {exc}") from None
    return found, absent, loaders


def entry_point_adapter(entry_point: str, name: str):
    """The adapter called ``name`` that the entry point ``entry_point`` registers."""
    return next(a for a in _entry_point_impls(only=entry_point)[0] if a.name == name)


def selected_impls(config) -> tuple[list, dict]:
    """The implementations this run certifies, and {name: how a child process loads it again}."""
    from .loading import ImplLoadError, load_impl
    requested = _requested(config)
    if requested:
        try:
            impls = [load_impl(v) for v in requested]
        except ImplLoadError as exc:
            raise pytest.UsageError(str(exc)) from None
        return impls, {i.name: functools.partial(load_impl, v) for i, v in zip(impls, requested)}
    found, _, loaders = _entry_point_impls()
    return found, loaders


def _absent(config) -> list[tuple[str, str]]:
    """(name, reason) of registered implementations that cannot load here (a package not installed)."""
    return [] if _requested(config) else _entry_point_impls()[1]


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin loads --hypothesis-profile
def pytest_configure(config):
    """Nothing global changes here: threads, warnings and the Hypothesis profile are set around each
    law only (:func:`attnspec.runner.law_environment`), so a session that runs no law is untouched."""
    if str(config.getoption("hypothesis_profile", None) or "").startswith("attnspec"):
        import_hypothesis(config)
        from . import profiles  # noqa: F401  (registers the attnspec profiles, so that one can be named)
    config.addinivalue_line("markers", "attnspec: a conformance check of one law on one implementation")
    devices = [d.strip() for d in config.getoption("attnspec_devices").split(",") if d.strip()]
    bad = [d for d in devices if d not in ("cpu", "cuda")]
    if bad:
        raise pytest.UsageError(f"--attnspec-devices {config.getoption('attnspec_devices')!r}: unknown device "
                                f"{bad[0]!r}; expected cpu and/or cuda")
    config.stash[_DEVICES] = devices
    config.stash[_IMPLS] = None
    config.stash[_LOADERS] = {}
    config.pluginmanager.register(Results(config), "attnspec-results")
    path = config.getoption("attnspec_deviations")
    config.stash[_FILE_DEVIATIONS] = read_deviations(path) if path else {}
    if _requested(config) and _runs_laws_here(config):  # a bad --impl stops the run now, with one line
        _pin_gpu(config)  # before the fork server starts, and before anything here touches CUDA
        import_hypothesis(config)
        if _supervisor(config) is not None:
            _supervisor(config).warm_up()  # its server imports torch while this process loads the impls
        try:
            _impls(config)
        except pytest.UsageError as exc:
            if not hasattr(config, "workerinput"):
                raise
            config.stash[_LOAD_ERROR] = str(exc)  # said by the controller, which never imports torch (see Results)


_PINNED = pytest.StashKey[bool]()


def _pin_gpu(config) -> None:
    """In a pytest-xdist worker, keep one GPU (:func:`attnspec.gpus.pin`), once, unless ``--attnspec-gpus all``."""
    if config.stash.get(_PINNED, False) or not hasattr(config, "workerinput"):
        return
    config.stash[_PINNED] = True
    if config.getoption("attnspec_gpus") == "per-worker":
        from .gpus import pin
        pin(config.workerinput.get("workerid"))


def import_hypothesis(config) -> None:
    """Import Hypothesis as plain Python does, not through pytest's assertion rewriting.

    pytest rewrites the asserts of every module of a package that provides a pytest plugin, Hypothesis's
    hundred included, and caches the result beside them; where it may not (``PYTHONDONTWRITEBYTECODE``, a
    read-only environment) it parses and rewrites them again in every process of every run: 0.7 s each,
    against 0.15 s. attnspec runs no test of Hypothesis's own, so nothing is lost. Called only in a process
    that certifies implementations; a no-op where Hypothesis is already imported.
    """
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    if "hypothesis" in sys.modules or hook not in sys.meta_path:
        return
    where = sys.meta_path.index(hook)
    sys.meta_path.remove(hook)
    try:
        importlib.import_module("hypothesis")
    finally:
        sys.meta_path.insert(where, hook)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller, as a worker finishes: Hypothesis's own terminal summary imports Hypothesis
    here; import it now, while the other workers finish their laws, not after them."""
    if _requested(node.config):
        import_hypothesis(node.config)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """In a pytest-xdist worker that could not load --impl, the failed collection carries the reason."""
    report = yield
    if report.failed and collector.config.stash.get(_LOAD_ERROR, None):
        report.attnspec_usage_error = collector.config.stash[_LOAD_ERROR]
    return report


_DEVICES = pytest.StashKey[list]()
_LOADERS = pytest.StashKey[dict]()
_SUPERVISOR = pytest.StashKey[object]()  # implementation name -> how a child process loads it again
_IMPLS = pytest.StashKey[object]()
_FILE_DEVIATIONS = pytest.StashKey[dict]()
_LOAD_ERROR = pytest.StashKey[str]()  # a worker's: why --impl did not load


def read_deviations(path: str) -> dict[str, list]:
    """``{implementation key: [Deviation]}`` from a TOML deviations file (see ``--attnspec-deviations``)."""
    from .capabilities import Deviation
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"--attnspec-deviations {path!r}: cannot read it ({exc})") from None
    found = {}
    for key, entries in data.items():
        if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            raise pytest.UsageError(f"--attnspec-deviations {path!r}: {key!r} should be an array of tables "
                                    f"([[{json.dumps(key)}]] with law, reason, when, match)")
        try:
            found[key] = [Deviation.of(e) for e in entries]
        except ValueError as exc:
            raise pytest.UsageError(f"--attnspec-deviations {path!r}, [[{json.dumps(key)}]]: {exc}") from None
    return found


def _with_file_deviations(impls: list, found: dict) -> list:
    """Add each file entry's deviations to the implementation it names (by --impl value or name)."""
    out = []
    for impl in impls:
        extra = [d for key in dict.fromkeys((adapter_origin(impl), impl.name)) for d in found.get(key, [])]
        if extra:  # a copy: the adapter object may be shared (a module-level ADAPTER)
            impl = copy.copy(impl)
            impl.capabilities = impl.capabilities.replace(deviations=(*impl.capabilities.deviations, *extra))
        out.append(impl)
    return out


def _with_reach(impls: list, text: str | None) -> list:
    """Each implementation with the reach of ``--attnspec-reach`` (copies: the adapter object may be shared)."""
    if not text:
        return impls
    from .capabilities import Reach
    try:
        reach = Reach.parse(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--attnspec-reach {text!r}: {exc}") from None
    out = []
    for impl in impls:
        impl = copy.copy(impl)
        impl.capabilities = impl.capabilities.replace(reach=reach)
        out.append(impl)
    return out


def deviation_warnings(impls: list, found: dict) -> list[str]:
    """One line for each deviation that names no known law, and each file entry that names no implementation."""
    from .checks import LAWS
    keys = {k for i in impls for k in (i.name, adapter_origin(i))}
    lines = [f"attnspec: --attnspec-deviations entry {k!r} names no implementation of this run"
             for k in found if k not in keys]
    lines += [f"attnspec: {i.name} declares a deviation of {d.law!r}, which is not a law"
              for i in impls for d in i.capabilities.deviations if d.law not in LAWS]
    return lines


def pytest_report_header(config):
    if config.stash.get(_IMPLS, None) is None and not (_requested(config) and _runs_laws_here(config)):
        return None
    return deviation_warnings(_impls(config), config.stash[_FILE_DEVIATIONS]) or None


def _impls(config) -> list:
    if config.stash.get(_LOAD_ERROR, None):
        pytest.fail(config.stash[_LOAD_ERROR], pytrace=False)  # fails collection; the controller says it
    if config.stash[_IMPLS] is None:
        impls, loaders = selected_impls(config)
        config.stash[_LOADERS].update(loaders)
        impls = _with_file_deviations(impls, config.stash[_FILE_DEVIATIONS])
        impls = _with_reach(impls, config.getoption("attnspec_reach"))
        names = [i.name for i in impls]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise pytest.UsageError(f"two implementations are both named {dupes[0]!r}: give them distinct names")
        config.stash[_IMPLS] = impls
    return config.stash[_IMPLS]


def _supervisor(config):
    """This process's :class:`attnspec.isolation.Supervisor` (made on first use); None with --attnspec-isolation=none."""
    if config.getoption("attnspec_isolation") == "none":
        return None
    if config.stash.get(_SUPERVISOR, None) is None:
        from .isolation import Limits, Supervisor
        try:
            supervisor = Supervisor(Limits(timeout=config.getoption("attnspec_timeout")),
                                    max_memory=config.getoption("attnspec_max_memory"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        supervisor.loaders = config.stash[_LOADERS]
        config.stash[_SUPERVISOR] = supervisor
        config.add_cleanup(supervisor.close)
    return config.stash[_SUPERVISOR]


def _runs_laws_here(config) -> bool:
    """False in pytest-xdist's controller, which hands the tests to its workers."""
    return hasattr(config, "workerinput") or not config.getoption("numprocesses", None)


@pytest.fixture(scope="session")
def attnspec_supervisor(request):
    """Runs each law in a child process (:class:`attnspec.isolation.Supervisor`); None with --attnspec-isolation=none."""
    return _supervisor(request.config)


class SuiteModule(pytest.Module):
    """attnspec.suite, imported by its own name (an editable install serves it from the repository's spec/
    folder, which pytest would otherwise import as ``spec.suite``: a second copy of every law)."""

    def _getobj(self):
        import_hypothesis(self.config)
        return importlib.import_module("attnspec.suite")


def pytest_pycollect_makemodule(module_path, parent):
    suite = importlib.util.find_spec("attnspec.suite")
    if suite is not None and suite.origin and Path(suite.origin).resolve() == Path(module_path).resolve():
        return SuiteModule.from_parent(parent, path=module_path, nodeid="attnspec/suite.py")  # a file in every test id
    return None


def _test_id(*parts: str) -> str:
    """A test id from names: characters that pytest ids, -k or the separator would misread become '_'."""
    return SEP.join(re.sub(r"[^\w.:/+@-]", "_", part) for part in parts)


def pytest_generate_tests(metafunc):
    if "attnspec_case" not in metafunc.fixturenames:
        return
    from .adapter import Unavailable, unavailable_reason
    from .checks import laws_for
    from .requirements import decide, device_dtypes, dtype_name

    config = metafunc.config
    _pin_gpu(config)  # the suite is collected: keep this worker's GPU before the lines below ask CUDA anything
    params = []
    # without CUDA, its thousands of cases are one skip saying so, not thousands of 's'
    devices = [d for d in config.stash[_DEVICES] if not (d == "cuda" and unavailable_reason(None, d) == NO_CUDA)]
    for impl in _impls(config):
        for device in devices:
            unavailable = unavailable_reason(impl, device)
            for dtype in device_dtypes(impl.capabilities, device):
                for law in laws_for(impl):
                    marks = [pytest.mark.attnspec]
                    claim = None if unavailable else decide(law, impl.capabilities, device, dtype)
                    if unavailable:
                        marks.append(pytest.mark.skip(reason=unavailable))
                    elif not claim.claimed:
                        marks.append(pytest.mark.skip(reason=claim.why()))
                    params.append(pytest.param((impl, law, device, dtype), marks=marks,
                                               id=_test_id(impl.name, law.name, device, dtype_name(dtype))))
    if devices != config.stash[_DEVICES]:
        params.append(pytest.param((Unavailable("every implementation", NO_CUDA), None, "cuda", None),
                                   marks=[pytest.mark.skip(reason=NO_CUDA)], id=_test_id("cuda", "every case")))
    for name, reason in _absent(config):  # one visible skip each, saying how to install
        params.append(pytest.param((Unavailable(name, reason), None, "cpu", None),
                                   marks=[pytest.mark.skip(reason=reason)],
                                   id=_test_id(name, "every law", "cpu", "every dtype")))
    metafunc.parametrize("attnspec_case", params)


def pytest_collection_modifyitems(config, items):
    """With --impl (or ATTNSPEC_IMPL), only the named implementations are certified: other tests collected
    alongside (a repository's own self-tests) are deselected."""
    if not _requested(config):
        return
    keep = [i for i in items if "attnspec_case" in getattr(getattr(i, "callspec", None), "params", {})]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped case carries its verdict too, built from its parameters (never from the test id)."""
    report = yield
    case = getattr(getattr(item, "callspec", None), "params", {}).get("attnspec_case")
    if case is not None and report.when == "setup" and report.skipped:
        from .adapter import Unavailable
        from .requirements import dtype_name
        from .verdict import Verdict

        impl, law, device, dtype = case
        if law is None and device == "cuda":  # no CUDA here: no implementation's verdict, one matrix line
            report.user_properties.append(("attnspec-note", f"cuda: skipped ({NO_CUDA})"))
            return report
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        verdict = Verdict(impl=impl.name, law=law.name if law else "every law", family=law.family if law else "-",
                          severity=law.severity if law else "results", device=device,
                          status="not claimed" if reason.startswith("not claimed") else "skipped",
                          detail=reason, dtype=dtype_name(dtype) if dtype else "every dtype")
        report.user_properties.append(("attnspec", json.dumps(verdict.to_dict(), default=str)))
        if not isinstance(impl, Unavailable):
            from .report import impl_info
            report.user_properties.append(("attnspec-impl", json.dumps({impl.name: impl_info(impl)})))
    return report


class Results:
    """Collects this session's verdicts (from every worker's reports) and renders them at the end."""

    def __init__(self, config):
        self.config, self.verdicts, self.notes = config, [], []
        self.impls: dict = {}  # name -> origin and capabilities, as the process that ran its laws saw them

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report):
        """pytest-xdist's controller: a worker could not load --impl. Stop the run with that one line."""
        if getattr(report, "attnspec_usage_error", None) and not hasattr(self.config, "workerinput"):
            raise pytest.UsageError(report.attnspec_usage_error)

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if "attnspec-impl" in props:
            self.impls.update(json.loads(props["attnspec-impl"]))
        if "attnspec-note" in props:
            self.notes.append(props["attnspec-note"])
        if "attnspec" in props and (report.when == "call" or report.skipped):
            from .verdict import Verdict

            self.verdicts.append(Verdict.from_dict(json.loads(props["attnspec"])))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter):
        """After pytest's own summary: the failing laws, most severe first (their messages are above), the matrix."""
        from .report import Matrix, render_statistics

        result = yield
        if not self.verdicts:
            return result
        matrix = Matrix.of(self.verdicts)
        if self.config.getoption("hypothesis_show_statistics", False):  # each law ran Hypothesis in a child process
            terminalreporter.write_sep("=", "attnspec: Hypothesis statistics per law")
            terminalreporter.write_line(render_statistics(self.verdicts))
        terminalreporter.write_sep("=", "attnspec conformance")
        terminalreporter.write_line(matrix.terminal())
        for note in self.notes:
            terminalreporter.write_line(note)
        return result

    def pytest_sessionfinish(self, session):
        if hasattr(self.config, "workerinput") or not self.verdicts:
            return
        from .report import write_reports

        write_reports(self.verdicts, self.impls, json_path=self.config.getoption("attnspec_report"),
                      markdown_path=self.config.getoption("attnspec_markdown"),
                      html_path=self.config.getoption("attnspec_html"),
                      extend=lambda report: self.config.hook.pytest_attnspec_report(config=self.config, report=report))
