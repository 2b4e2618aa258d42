"""The installed plugin is inert in a project that does not run the suite, and works from one that does."""
import os
import subprocess
import sys

USER_TESTS = '''
import warnings

import torch
from hypothesis import given, settings, strategies as st

drawn = []


@given(st.integers())
def test_hypothesis_runs_its_default_budget(x):
    drawn.append(x)


def test_report_the_session_state():
    print("STATE", len(drawn), torch.get_num_threads(), settings.get_current_profile_name(),
          settings.default.max_examples, len(warnings.filters), torch.backends.cuda.matmul.allow_tf32)
'''


def _state(folder, *extra):
    run = subprocess.run([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", "-n", "0", *extra],
                         capture_output=True, text=True, timeout=300, cwd=folder,
                         env={k: v for k, v in os.environ.items() if k != "ATTNSPEC_IMPL"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return next(line[line.index("STATE"):] for line in run.stdout.splitlines() if "STATE" in line)


def _project(folder):
    folder.mkdir()
    (folder / "spec").mkdir()  # a project of its own with a spec package (a common name)
    (folder / "spec" / "__init__.py").write_text("VALUE = 1\n")
    (folder / "test_user.py").write_text(USER_TESTS + "\n\ndef test_own_spec():\n"
                                         "    import spec\n    assert spec.VALUE == 1\n")
    return folder


def test_a_project_that_does_not_run_the_suite_sees_no_difference(tmp_path):
    """Threads, Hypothesis profile and budget, warnings filters and files: the same with and without attnspec."""
    with_plugin, without = _project(tmp_path / "with"), _project(tmp_path / "without")
    state_with, state_without = _state(with_plugin), _state(without, "-p", "no:attnspec")
    assert state_with == state_without and " 100 " in state_with, (state_with, state_without)
    # Hypothesis caches the literals of "local" modules (outside site-packages) in .hypothesis/constants:
    # an editable install makes attnspec's own files local; a wheel's live in site-packages (.ci/run checks it)
    def files(folder):
        hypothesis_own = lambda p: "constants" in p.parts or p.name == ".gitignore"  # noqa: E731
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and not hypothesis_own(p))
    assert files(with_plugin) == files(without)
