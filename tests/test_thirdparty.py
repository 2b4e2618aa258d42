"""Third-party adapters (the ``thirdparty`` extra): an installed package whose adapter does not load fails.

The adapters themselves are certified by the main conformance run, like the bundled ones;
absent packages show there as one skip each, with the install command.
"""
import pytest

from attnspec.impls import thirdparty


def test_registry_imports_without_the_packages():
    names = [e.name for e in thirdparty.ENTRIES]
    assert len(names) == len(set(names)) >= 3
    assert {a.name for a in thirdparty.available()} | {n for n, _ in thirdparty.missing()} \
        | {n for n, _ in thirdparty.broken()} == set(names)


@pytest.mark.parametrize("name, reason", thirdparty.broken() or [pytest.param("", "", marks=pytest.mark.skip(
    reason="every installed third-party package loads its adapter"))])
def test_thirdparty_adapter_loads(name, reason):
    pytest.fail(f"{name}: {reason}")
