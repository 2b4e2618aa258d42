"""Repository-wide pytest setup. The attnspec plugin itself (options, the conformance matrix) is
registered by the installed package's ``pytest11`` entry point and changes nothing global; this
repository's own self-tests run under attnspec's fast Hypothesis profile unless another is chosen."""
import pytest

try:
    from attnspec.plugin import import_hypothesis
except ImportError as exc:  # the README's first command installs it
    raise pytest.UsageError(f"attnspec is not installed in this Python ({exc}): run "
                            "pip install torch==2.13.0 -e \".[test,thirdparty]\" first (README, Quick start)") from None


def pytest_configure(config):
    import_hypothesis(config)  # as plain Python does: see its docstring
    import attnspec.profiles  # noqa: F401  (registers the attnspec profiles)
    from hypothesis import settings

    if settings.get_current_profile_name() == "default":
        settings.load_profile("attnspec")


# The mutant zoo certifies every mutant and every correct variant: about half of the self-tests' time.
# It runs with --zoo (CI runs it, after the README's command); without, each of its cases is one visible skip.
# The baseline batteries (an example grid per zoo, FlashAttention 2's grid) and the kill-matrix command cost
# tens of seconds: --zoo too.
ZOO_CASES = ("mutant_is_rejected", "equivalent_is_accepted", "accept_the_correct_implementations",
             "baselines_accept_the_correct_kernels", "kill_matrix_command")


def pytest_addoption(parser):
    parser.addoption("--zoo", action="store_true", default=False,
                     help="also certify every mutant and correct variant of the zoo (tests/test_zoo.py)")
    parser.addoption("--docs-commands", action="store_true", default=False,
                     help="also run every shell command of README.md and docs/ (tests/test_docs.py::test_command)")


def pytest_collection_modifyitems(config, items):
    zoo = pytest.mark.skip(reason="the mutant zoo runs with --zoo (CI runs it; see docs/zoo.md)")
    commands = pytest.mark.skip(reason="the documentation's commands run with --docs-commands (CI runs them)")
    for item in items:
        if not config.getoption("--zoo") and item.path.name == "test_zoo.py" and item.originalname.endswith(ZOO_CASES):
            item.add_marker(zoo)
        if (not config.getoption("--docs-commands") and item.path.name == "test_docs.py"
                and item.originalname == "test_command"):
            item.add_marker(commands)
