"""Self-test: every known-bad implementation is rejected, by the laws that name it."""
import pytest

from attnspec.impls import KNOWN_BAD
from attnspec.checks import LAWS
from attnspec.runner import run_law

CASES = [pytest.param(bad, law, id=f"{bad.adapter.name}|{law}") for bad in KNOWN_BAD for law in bad.rejected_by]


@pytest.mark.parametrize("bad, law", CASES)
def test_known_bad_is_rejected(bad, law):
    result = run_law(LAWS[law], bad.adapter, shrink=False)
    assert result.status == "fail", (
        f"{law} should reject {bad.adapter.name} ({bad.why}), but its status is {result.status!r}: "
        f"{result.message}")
    assert bad.adapter.name in result.message and law in result.message


def test_every_known_bad_names_real_laws():
    for bad in KNOWN_BAD:
        unknown = [law for law in bad.rejected_by if law not in LAWS]
        assert not unknown, f"{bad.adapter.name}: rejected_by names unknown laws {unknown}"
        assert bad.rejected_by, f"{bad.adapter.name}: names no law that rejects it"
