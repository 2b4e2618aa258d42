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


def test_html_report_and_the_report_hook(tmp_path):
    """--attnspec-html writes one page (matrix coloured by status, each failure with message and repro);
    a conftest.py implementing pytest_attnspec_report adds to the JSON report; the report options' earlier
    spellings still work."""
    from html.parser import HTMLParser
    import json

    (tmp_path / "conftest.py").write_text("def pytest_attnspec_report(config, report):\n"
                                          "    report['environment']['added_by'] = 'a plugin'\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-q", "-p",
                          "no:cacheprovider", "--impl", "tests.examples.fused_qkv:ADAPTER",
                          "--impl", "tests.examples.fused_qkv:BROKEN", "--attnspec-devices", "cpu",
                          "-k", "output_matches_reference", "--attnspec-html", "report.html",
                          "--conformance-report", "report.json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text())["environment"]["added_by"] == "a plugin"

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.classes, self.pre = [], [], []
            self._in = None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "tr":
                self.rows.append([])
            if tag == "td":
                self.classes.append(attrs.get("class", ""))
            self._in = (tag, attrs.get("class"))

        def handle_data(self, data):
            if self._in and self._in[0] == "td" and self.rows:
                self.rows[-1].append(data)
            if self._in and self._in[0] == "pre":
                self.pre.append((self._in[1], data))

    page = Page()
    page.feed((tmp_path / "report.html").read_text())
    labels = [row[0] for row in page.rows if row]
    names = [label.rsplit(" ", 1)[0] for label in labels]  # rows: implementations sorted, then dtypes
    assert names == sorted(names) and len(set(names)) == 2, labels
    assert "s-fail" in page.classes and "s-pass" in page.classes
    assert any(cls == "message" and "breaks output_matches_reference" in text for cls, text in page.pre)
    assert any(cls == "repro" and "replay(" in text for cls, text in page.pre)


def test_certifies_from_a_project_with_its_own_spec_impls_and_conftest(tmp_path):
    """A user's repository that has its own spec/ and impls/ packages and a conftest.py."""
    project = _project(tmp_path / "project")
    (project / "impls").mkdir()
    (project / "impls" / "__init__.py").write_text("")
    (project / "conftest.py").write_text("import spec  # the project's own\n")
    (project / "impls" / "mine.py").write_text("from torch.nn import MultiheadAttention as Mine  # noqa: F401\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-q", "-p",
                          "no:cacheprovider", "--impl", "impls.mine:Mine", "--attnspec-devices", "cpu",
                          "-k", "output_matches_reference and float64"],
                         capture_output=True, text=True, timeout=300, cwd=project)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "impls.mine:Mine f64" in run.stdout and "PASS" in run.stdout


def test_the_pytest_script_finds_a_loose_module_in_the_working_directory(tmp_path):
    """``pytest`` (the script, which leaves the working directory off sys.path) certifies ``mine.py`` there, as
    ``python -m pytest`` does; a module that is nowhere gets one line naming both ways out."""
    (tmp_path / "mine.py").write_text("from torch.nn import MultiheadAttention as Mine  # noqa: F401\n")
    script = [os.path.join(os.path.dirname(sys.executable), "pytest"), "-n", "0", "--pyargs", "attnspec.suite", "-q",
              "-p", "no:cacheprovider", "--attnspec-devices", "cpu", "-k", "output_matches_reference and float64"]
    run = subprocess.run([*script, "--impl", "mine:Mine"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "mine:Mine f64" in run.stdout and "PASS" in run.stdout
    run = subprocess.run([*script, "--impl", "absent:Mine"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    assert "cannot import module 'absent'" in run.stderr + run.stdout
    assert "run pytest from the folder that holds 'absent'" in run.stderr + run.stdout


def test_impl_in_this_repository_certifies_that_implementation_only():
    run = subprocess.run([sys.executable, "-m", "pytest", "--impl", "attnspec.impls.sdpa:SDPA", "--co", "-q", "-n", "0",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    assert ids and all("test_conformance[" in i and "[sdpa|" in i or "[cuda|" in i for i in ids), ids[:5]
    assert "deselected" in run.stdout


IMPORT_PAST_A_HOOK = '''
import sys
from types import SimpleNamespace

from attnspec.plugin import import_hypothesis


class Spy:  # stands for pytest's assertion-rewriting import hook
    seen = []

    def find_spec(self, name, path=None, target=None):
        self.seen.append(name)


spy = Spy()
sys.meta_path.insert(0, spy)
import_hypothesis(SimpleNamespace(pluginmanager=SimpleNamespace(rewrite_hook=spy)))
import hypothesis.strategies  # noqa: F401  (already imported: the hook is not asked)
print("hypothesis" in sys.modules, [n for n in spy.seen if n.startswith("hypothesis")], sys.meta_path[0] is spy)
'''


def test_a_certifying_process_imports_hypothesis_past_pytests_assertion_rewriting():
    """Rewriting Hypothesis's hundred modules costs 0.7 s in every process where pytest cannot cache them."""
    run = subprocess.run([sys.executable, "-c", IMPORT_PAST_A_HOOK], capture_output=True, text=True, timeout=60)
    assert run.stdout.split("\n")[0] == "True [] True", run.stdout + run.stderr
