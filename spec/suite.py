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
from .runner import run_law


def test_conformance(attnspec_case, attnspec_supervisor, request):
    """The implementation obeys the law on every problem Hypothesis draws."""
    impl, law, device, dtype = attnspec_case
    seed = request.config.getoption("hypothesis_seed", None)  # --hypothesis-seed, from Hypothesis's plugin
    options = dict(database=settings.default.database, digest=request.node.nodeid, profile=profiles.active(),
                   seed=int(seed) if isinstance(seed, str) and seed.isdigit() else seed)
    run = run_law if attnspec_supervisor is None else attnspec_supervisor.run_law  # --attnspec-isolation=none
    verdict = run(law, impl, device=device, dtype=dtype, **options)
    request.node.user_properties.append(("attnspec", json.dumps(verdict.to_dict(), default=str)))
    request.node.user_properties.append(("attnspec-impl", json.dumps({impl.name: impl_info(impl)})))
    if verdict.status == "deviation":
        pytest.xfail(verdict.first_detail())
    if verdict.failing:  # the whole message, once: the law, what is wrong, the problem, the repro
        pytest.fail(verdict.message, pytrace=False)
