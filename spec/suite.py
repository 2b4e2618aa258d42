"""The conformance test: every law, on every selected implementation, device and dtype.

Collect it from your own repository with ``pytest --pyargs attnspec.suite --impl pkg.mod:Class``,
or import it into a test file: ``from attnspec.suite import test_conformance``.
The attnspec pytest plugin parametrises it (see :mod:`attnspec.plugin`).
"""
import json

import pytest
from hypothesis import settings

from . import profiles
from .report import impl_info
from .repro import adapter_origin, repro_snippet
from .runner import FAILING, run_law
from .strategies import dtype_name


def test_conformance(attnspec_case, attnspec_supervisor, request):
    """The implementation obeys the law on every problem Hypothesis draws."""
    impl, law, device, dtype = attnspec_case
    seed = request.config.getoption("hypothesis_seed", None)  # --hypothesis-seed, from Hypothesis's plugin
    options = dict(database=settings.default.database, digest=request.node.nodeid, profile=profiles.active(),
                   seed=int(seed) if isinstance(seed, str) and seed.isdigit() else seed)
    if attnspec_supervisor is None:  # --attnspec-isolation=none
        result = run_law(law, impl, device=device, dtype=dtype, **options)
    else:
        result = attnspec_supervisor.run_law(law, impl, device=device, dtype=dtype, **options)
    record = {"impl": impl.name, "law": law.name, "family": law.family, "severity": law.severity, "device": device,
              "dtype": dtype_name(dtype),
              "status": result.status, "seconds": round(result.seconds, 3), "ratio": result.ratio,
              "origin": adapter_origin(impl), "examples": result.examples, "compared": result.compared,
              "deviations": result.deviations}
    if result.problem is not None:
        record["problem"] = result.problem.short()
        record["repro"] = repro_snippet(impl, law.name, result.problem, device)
    if result.status != "pass":
        record["reason"] = result.message
    request.node.user_properties.append(("attnspec", json.dumps(record, default=str)))
    request.node.user_properties.append(("attnspec-impl", json.dumps({impl.name: impl_info(impl)})))
    if result.status == "deviation":
        pytest.xfail(result.message.splitlines()[0])
    if result.status in FAILING:  # one line here; the whole message (problem, repro) in a section below it
        lines = result.message.strip().splitlines()
        request.node.add_report_section("call", "attnspec", result.message)
        pytest.fail(lines[1].strip() if len(lines) > 1 and " breaks " in lines[0] else lines[0], pytrace=False)
