"""Hooks other pytest plugins may implement to extend attnspec (as pytest-benchmark's do)."""
import pytest

hookspec = pytest.hookspec


@hookspec
def pytest_attnspec_report(config, report: dict) -> None:
    """Add to or change the JSON conformance report (``--conformance-report``) before it is written.

    ``report`` has ``environment``, ``summary`` and ``implementations`` (per implementation: ``origin``,
    ``capabilities``, ``verdict`` and ``results`` by device, dtype and law). Example, in a conftest.py::

        def pytest_attnspec_report(config, report):
            report["environment"]["ci_job"] = os.environ.get("CI_JOB_ID")
    """
