"""Self-test of the suite's power: every mutant in the zoo is rejected, every equivalent accepted.

Runs under the default profile. A mutant runs until its first failing law
(``stop_at_first_failure``), so a rejection costs little; the correct drop-in and
its equivalent variants run every law. ``python -m tests.zoo.kill_matrix``
writes the full mutant x family matrix to ``docs/kill_matrix.md``.
"""
import warnings

import pytest
import torch

from attnspec import DropIn
from attnspec.runner import FAILING, certify
from tests.zoo.base import ZooMHA
from tests.zoo.baselines import BASELINES
from tests.zoo.mutants import EQUIVALENTS, MUTANTS, describe

# Real bugs the suite's strategies do not reach yet: the test flips to XPASS (strict: a failure) when they do.
# Entry: mutant name -> why the suite misses it (e.g. "strategies never draw X").
KNOWN_SURVIVORS: dict[str, str] = {}

CORRECT = [("ZooMHA", ZooMHA)] + EQUIVALENTS


def _mark(name):
    if name in KNOWN_SURVIVORS:
        return [pytest.mark.xfail(reason=KNOWN_SURVIVORS[name], strict=True)]
    return []


def rejected(adapter, name, cls) -> list:
    """Certify a mutant until its first failing law; assert that one fails and none errors. The failures."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = certify(adapter, stop_at_first_failure=True)
    errors = [r for r in results if r.status in ("error", "inconclusive")]
    assert not errors, f"the suite errored on {name} in {errors[0].law}: {errors[0].message}"
    failed = [r for r in results if r.status == "fail"]
    assert failed, f"{name} survived all {len(results)} laws; its bug: {describe(cls)}"
    return failed


def accepted(adapter, name) -> list:
    """Certify a correct variant with every law; assert that no law fails. The results."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = certify(adapter)
    bad = [f"{r.law} ({r.status}): {r.message}" for r in results if r.status in FAILING]
    assert not bad, f"{name} computes the reference function, but the suite rejects it:\n" + "\n".join(bad)
    return results


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n, marks=_mark(n)) for n, c in MUTANTS])
def test_mutant_is_rejected(name, cls):
    assert name in rejected(DropIn(cls, name=name), name, cls)[0].message


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in CORRECT])
def test_equivalent_is_accepted(name, cls):
    assert any(r.status == "pass" for r in accepted(DropIn(cls, name=name), name))


@pytest.mark.parametrize("battery", list(BASELINES))
def test_baselines_accept_the_correct_implementations(battery):
    for name, cls in CORRECT:
        verdict = BASELINES[battery](cls)
        assert not verdict.killed, f"baseline {battery} rejects {name}, which is correct: {verdict.reason}"


def test_zoo_is_well_formed():
    names = [n for n, _ in MUTANTS] + [n for n, _ in EQUIVALENTS]
    assert len(set(names)) == len(names), "duplicate names in the zoo"
    assert len(MUTANTS) >= 30 and len(EQUIVALENTS) >= 6
    for name, cls in MUTANTS:
        assert issubclass(cls, ZooMHA) and cls is not ZooMHA, name
        assert "; hidden " in describe(cls), f"{name} needs a one-line comment '<bug>; hidden when <configs>'"
    assert set(KNOWN_SURVIVORS) <= {n for n, _ in MUTANTS}


# -------------------------------------------------------------- the causal flag, grouped-query heads, windows

from attnspec.impls.modern_attention import ModernAttention  # noqa: E402
from tests.zoo.baselines import FEATURE_BASELINES  # noqa: E402
from tests.zoo.features import FEATURE_CORRECT, FEATURE_MUTANTS, NAMED_BY, alignment_of, feature_adapter  # noqa: E402


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in FEATURE_MUTANTS])
def test_feature_mutant_is_rejected(name, cls):
    rejected(feature_adapter(name, cls), name, cls)


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in FEATURE_MUTANTS if n in NAMED_BY])
def test_feature_mutant_is_rejected_by_the_law_naming_its_bug(name, cls, request):
    """A feature mutant fails the law of its feature (in float64, where every law draws the most), not only some law."""
    if not request.config.getoption("--zoo"):
        pytest.skip("the mutant zoo runs with --zoo (CI runs it; see docs/zoo.md)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict, = certify(feature_adapter(name, cls), laws=[NAMED_BY[name]], dtype=torch.float64)
    assert verdict.status == "fail", f"{name} passes {NAMED_BY[name]} ({verdict.status}); its bug: {describe(cls)}"


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in FEATURE_CORRECT])
def test_feature_equivalent_is_accepted(name, cls):
    results = accepted(feature_adapter(name, cls), name)
    assert any(r.status == "pass" and r.law.startswith("causal_flag") for r in results)


@pytest.mark.parametrize("battery", list(FEATURE_BASELINES))
def test_feature_baselines_accept_the_correct_implementations(battery):
    for name, cls in FEATURE_CORRECT:
        verdict = FEATURE_BASELINES[battery](cls, alignment_of(name))
        assert not verdict.killed, f"baseline {battery} rejects {name}, which is correct: {verdict.reason}"


def test_feature_zoo_is_well_formed():
    names = [n for n, _ in FEATURE_MUTANTS + FEATURE_CORRECT]
    assert len(set(names)) == len(names) and not set(names) & {n for n, _ in MUTANTS + CORRECT}
    for name, cls in FEATURE_MUTANTS:
        assert issubclass(cls, ModernAttention) and cls is not ModernAttention, name
        assert "; hidden " in describe(cls), f"{name} needs a one-line comment '<bug>; hidden when <configs>'"
    assert set(NAMED_BY) <= {n for n, _ in FEATURE_MUTANTS}


# ------------------------------------------------------------------ the decoder zoo (RoPE, a key/value cache)

from tests.zoo.baselines import DECODING_BASELINES  # noqa: E402
from tests.zoo.decoding import DECODING_CORRECT, DECODING_MUTANTS, decoding_adapter, rope_of  # noqa: E402


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in DECODING_MUTANTS])
def test_decoding_mutant_is_rejected(name, cls):
    rejected(decoding_adapter(name, cls), name, cls)


@pytest.mark.parametrize("name, cls", [pytest.param(n, c, id=n) for n, c in DECODING_CORRECT])
def test_decoding_equivalent_is_accepted(name, cls):
    results = accepted(decoding_adapter(name, cls), name)
    assert {r.law for r in results if r.status == "pass"} >= {"rope_depends_only_on_relative_position",
                                                              "decoding_in_chunks_equals_causal_call"}


@pytest.mark.parametrize("battery", list(DECODING_BASELINES))
def test_decoding_baselines_accept_the_correct_implementations(battery):
    for name, cls in DECODING_CORRECT:
        verdict = DECODING_BASELINES[battery](cls, rope_of(name))
        assert not verdict.killed, f"baseline {battery} rejects {name}, which is correct: {verdict.reason}"


def test_decoding_zoo_is_well_formed():
    names = [n for n, _ in DECODING_MUTANTS + DECODING_CORRECT]
    assert len(set(names)) == len(names) and not set(names) & {n for n, _ in FEATURE_MUTANTS + FEATURE_CORRECT}
    assert len(DECODING_MUTANTS) >= 9
    for name, cls in DECODING_MUTANTS:
        assert "; hidden " in describe(cls), f"{name} needs a one-line comment '<bug>; hidden when <configs>'"


# ------------------------------------------------------------------ the kernel zoo (the kernel contract)

from attnspec.kernel import CanonicalKernel  # noqa: E402
from tests.zoo.baselines import KERNEL_BASELINES  # noqa: E402
from tests.zoo.kernels import KERNEL_CORRECT, KERNEL_MUTANTS, kernel_adapter  # noqa: E402
from tests.zoo.kernels import describe as describe_kernel  # noqa: E402


@pytest.mark.parametrize("name, kernel", [pytest.param(n, k, id=n) for n, k in KERNEL_MUTANTS])
def test_kernel_mutant_is_rejected(name, kernel):
    rejected(kernel_adapter(name, kernel), name, kernel)


@pytest.mark.parametrize("name, kernel", [pytest.param(n, k, id=n) for n, k in KERNEL_CORRECT])
def test_kernel_equivalent_is_accepted(name, kernel):
    results = accepted(kernel_adapter(name, kernel), name)
    assert any(r.status == "pass" and r.law == "kernel_output_matches_reference" for r in results)


@pytest.mark.parametrize("battery", list(KERNEL_BASELINES))
def test_kernel_baselines_accept_the_correct_kernels(battery):
    """The bundled tiled kernel passes each baseline battery (the kill matrix runs them on every correct variant:
    FlashAttention 2's grid costs minutes on two cores)."""
    for name, kernel in KERNEL_CORRECT[:1]:
        verdict = KERNEL_BASELINES[battery](kernel)
        assert not verdict.killed, f"baseline {battery} rejects {name}, which is correct: {verdict.reason}"


def test_kernel_zoo_is_well_formed():
    names = [n for n, _ in KERNEL_MUTANTS + KERNEL_CORRECT]
    assert len(set(names)) == len(names) and len(KERNEL_MUTANTS) >= 20
    for name, kernel in KERNEL_MUTANTS:
        assert isinstance(kernel_adapter(name, kernel), CanonicalKernel)
        assert "; hidden " in describe_kernel(kernel), f"{name} needs a one-line comment '<bug>; hidden when <configs>'"


def test_kernel_kill_matrix_command(tmp_path):
    """docs/kernels.md's command, cut to one mutant and one seed: it writes a matrix that says the mutant died."""
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "matrix.md"
    done = subprocess.run([sys.executable, "-m", "tests.zoo.kill_matrix", "--zoo", "kernels", "--seeds", "1",
                           "--jobs", "1", "--only", "LseBase2", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| LseBase2 |" in out.read_text() and "1/1 mutants killed" in done.stderr


# ------------------------------------------------------------------ the varlen zoo (varlen, paged KV, the cache step)

from tests.zoo.baselines import VARLEN_BASELINES  # noqa: E402
from tests.zoo.varlen import VARLEN_CORRECT, VARLEN_MUTANTS, varlen_adapter  # noqa: E402
from tests.zoo.varlen import describe as describe_varlen  # noqa: E402


@pytest.mark.parametrize("name, kernel", [pytest.param(n, k, id=n) for n, k in VARLEN_MUTANTS])
def test_varlen_mutant_is_rejected(name, kernel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = certify(varlen_adapter(name, kernel), stop_at_first_failure=True)
    errors = [r for r in results if r.status in ("error", "inconclusive")]
    assert not errors, f"the suite errored on {name} in {errors[0].law}: {errors[0].message}"
    assert any(r.status == "fail" for r in results), f"{name} survived; its bug: {describe_varlen(kernel)}"


@pytest.mark.parametrize("name, kernel", [pytest.param(n, k, id=n) for n, k in VARLEN_CORRECT])
def test_varlen_equivalent_is_accepted(name, kernel):
    results = accepted(varlen_adapter(name, kernel), name)
    assert any(r.status == "pass" and r.law in ("varlen_matches_reference", "cache_step_matches_reference")
               for r in results)


@pytest.mark.parametrize("battery", list(VARLEN_BASELINES))
def test_varlen_baselines_accept_the_correct_kernels(battery):
    """The bundled varlen kernel and cache step pass each baseline battery (the kill matrix runs them on every
    correct variant: FlashAttention 2's grids cost minutes on two cores)."""
    for name, kernel in VARLEN_CORRECT[:2]:
        adapter = varlen_adapter(name, kernel)
        caps = adapter.capabilities
        fn = adapter.attend_varlen if caps.entry == "varlen" else adapter.attend_cache
        verdict = VARLEN_BASELINES[battery](fn, caps.entry, caps)
        assert not verdict.killed, f"baseline {battery} rejects {name}, which is correct: {verdict.reason}"


def test_varlen_zoo_is_well_formed():
    names = [n for n, _ in VARLEN_MUTANTS + VARLEN_CORRECT]
    assert len(set(names)) == len(names) and len(VARLEN_MUTANTS) >= 12
    assert not set(names) & {n for n, _ in KERNEL_MUTANTS + KERNEL_CORRECT}
    for name, kernel in VARLEN_MUTANTS:
        assert kernel.ENTRY in ("varlen", "kvcache"), name
        assert "; hidden " in describe_varlen(kernel), f"{name} needs a comment '<bug>; hidden when <configs>'"


def test_varlen_kill_matrix_command(tmp_path):
    """docs/kernels_varlen.md's command, cut to one mutant and one seed: it writes a matrix that says the mutant died."""
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "matrix.md"
    done = subprocess.run([sys.executable, "-m", "tests.zoo.kill_matrix", "--zoo", "varlen", "--seeds", "1",
                           "--jobs", "1", "--only", "AppendOneRowOff", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| AppendOneRowOff |" in out.read_text() and "1/1 mutants killed" in done.stderr


def test_names_are_unique_across_the_zoos():
    """The kill matrix finds a mutant or variant by its name: one name in two zoos would certify the wrong one."""
    from tests.zoo.kill_matrix import DECODING_NAMES, FEATURE_NAMES, KERNEL_NAMES, VARLEN_NAMES
    zoos = {"mha": {n for n, _ in MUTANTS + CORRECT}, "features": FEATURE_NAMES, "decoding": DECODING_NAMES,
            "kernels": KERNEL_NAMES, "varlen": VARLEN_NAMES}
    for a in zoos:
        for b in zoos:
            assert a >= b or not zoos[a] & zoos[b], f"in the {a} and {b} zoos: {sorted(zoos[a] & zoos[b])}"
