"""The documentation stays true: the generated pages are current, and what README.md and docs/ show runs.

* ``docs/laws.md``, ``docs/options.md`` and ``docs/index.md`` are generated (``python tools/gen_docs.py``).
* Every fenced ``bash`` block is a command the reader may paste, and :func:`test_command` runs it, block by
  block, in a copy of the repository, with a small Hypothesis budget (``tests/docs_budget.py``) and tiny
  benchmark times. It runs with ``--docs-commands`` (CI passes it); without, each block is one skip.
* Every fenced ``python`` block runs (:func:`test_python_snippet`), and ``toml`` blocks parse.

A comment on the line before a block adjusts its test, in JSON::

    <!-- docs-test {"append": "-k float64"} -->                  appended to each pytest command of the block
    <!-- docs-test {"replace": {"mypackage.attention:MyAttention": "tests.examples.fused_qkv:ADAPTER"}} -->
    <!-- docs-test {"returncode": 1, "expect": ["breaks output_matches_reference"]} -->
    <!-- docs-test {"needs": "cuda"} -->                          skipped, with the reason, where absent
    <!-- docs-test {"skip": "installs packages from the package index (network)"} -->
    <!-- docs-test {"same-as": "tests/examples/fused_qkv.py"} -->  a python block: its lines are that file's

A block without a language that looks like a command fails :func:`test_every_command_is_tested`: tag it
``bash`` (it then runs) or ``text`` (output, a record).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REGENERATE = "python tools/gen_docs.py"
GENERATED = ("index.md", "laws.md", "options.md")  # written by tools/gen_docs.py: index.md is the README
SHELL = ("bash", "sh", "shell", "console")
KEYS = {"append", "replace", "returncode", "expect", "needs", "skip", "same-as", "exec", "timeout"}
ANNOTATION = re.compile(r"^\s*<!--\s*docs-test\s+(\{.*\})\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
LOOKS_LIKE_A_COMMAND = re.compile(r"^\s*(\$ |python3? |pytest\b|pip |mkdocs |cd |[A-Z_]+=\S* )")
# What a reader may run for minutes, the tests run for a moment (each pattern -> its replacement).
BUDGET = ((re.compile(r"--benchmark-max-time[= ]\S+"), "--benchmark-max-time=0.001"),
          (re.compile(r"--benchmark-min-rounds[= ]\S+"), "--benchmark-min-rounds=1"))
NEEDS = {"cuda": "needs a CUDA GPU", "mkdocs": "needs mkdocs (pip install -e '.[docs]')",
         "matplotlib": "needs matplotlib", "triton": "needs triton (pip install -e '.[triton]')",
         "no-cuda": "shows what happens without a GPU: on a GPU machine it would certify for minutes and rewrite "
                    "docs/cuda.md"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list:
    """README.md and every page of docs/ that is written by hand."""
    return [README, *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in GENERATED)]


def blocks(page: Path) -> list:
    lines, found, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang, start = opening.group(1), opening.group(2), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        options = {}
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        annotated = ANNOTATION.match(before)
        if annotated:
            options = json.loads(annotated.group(1))
        found.append(Block(page, start + 1, lang, "\n".join(body) + "\n", options))
        i += 1
    return found


ALL_BLOCKS = [b for page in pages() for b in blocks(page)]
COMMANDS = [b for b in ALL_BLOCKS if b.lang in SHELL]
SNIPPETS = [b for b in ALL_BLOCKS if b.lang == "python"]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the generated pages -------------------------------------------------------------------------------------
def test_generated_pages_are_current():
    stale = load_generator().stale_pages()
    assert not stale, (f"{', '.join(str(p.relative_to(ROOT)) for p in stale)} differ from the registry, the "
                       f"plugin's options or the README: run {REGENERATE} and commit the result")


def test_laws_page_lists_every_law_with_its_statement_and_source():
    from attnspec.checks import LAWS

    text = (ROOT / "docs" / "laws.md").read_text()
    missing = [n for n, law in LAWS.items() if f"| `{n}` |" not in text or f"`{law.source}`" not in text]
    assert not missing, f"docs/laws.md lacks or misplaces {missing}: run {REGENERATE}"


# -- the README ----------------------------------------------------------------------------------------------
def test_readme_is_a_front_door_with_the_two_commands():
    text = README.read_text()
    assert 'pip install torch==2.13.0 -e ".[test,thirdparty]"' in text
    assert "\npytest\n" in text
    assert len(text.splitlines()) <= 300, "README.md is the front door: move the detail to a page of docs/"


def test_links_between_pages_resolve():
    broken = []
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"^[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# -- the commands --------------------------------------------------------------------------------------------
def test_every_command_is_tested():
    """Every block is tagged; a shell block's annotation is valid; no untagged block hides a command."""
    problems = []
    for b in ALL_BLOCKS:
        unknown = set(b.options) - KEYS
        if unknown:
            problems.append(f"{b.id}: unknown docs-test keys {sorted(unknown)} (known: {sorted(KEYS)})")
        if b.options.get("needs") and b.options["needs"] not in NEEDS:
            problems.append(f"{b.id}: needs={b.options['needs']!r}, known: {sorted(NEEDS)}")
        if b.lang == "" and LOOKS_LIKE_A_COMMAND.match(b.text):
            problems.append(f"{b.id}: an untagged block that looks like a command: tag it bash (then it runs in "
                            "tests/test_docs.py) or text")
    assert not problems, "\n".join(problems)
    assert len(COMMANDS) >= 10, [b.id for b in COMMANDS]


def missing(need: str | None) -> str | None:
    """Why the machine lacks what a block needs, or None."""
    if need is None:
        return None
    if need in ("cuda", "no-cuda"):
        import torch

        return None if torch.cuda.is_available() == (need == "cuda") else NEEDS[need]
    return None if importlib.util.find_spec(need) else NEEDS[need]


def script_of(block: Block) -> str:
    """The block as the test runs it: replacements, budgets, and what is appended to each pytest command."""
    text = block.text
    for old, new in block.options.get("replace", {}).items():
        assert old in text, f"{block.id}: replace {old!r}, which is not in the block"
        text = text.replace(old, new)
    for pattern, new in BUDGET:
        text = pattern.sub(new, text)
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if block.options.get("append"):  # after each pytest command of the line (a line may chain several)
            parts = re.split(r"(\s(?:&&|\|\||;)\s)", line)
            line = "".join(f"{part} {block.options['append']}" if re.match(r"^\s*(\S+=\S*\s+)*(python -m )?pytest\b",
                                                                         part) else part for part in parts)
        lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository to run the commands in: what they write stays out of the real one."""
    copy = tmp_path_factory.mktemp("checkout") / "attnspec"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".hypothesis", ".benchmarks", "__pycache__", "*.egg-info", "build", "site", ".ruff_cache"))
    return copy


@pytest.mark.parametrize("block", COMMANDS, ids=[b.id for b in COMMANDS])
def test_command(block, checkout):
    """The block's commands run, in a copy of the repository, and end as the page says."""
    if block.options.get("skip"):
        pytest.skip(block.options["skip"])
    why = missing(block.options.get("needs"))
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATTNSPEC_", "HYPOTHESIS"))}
    # one process per command unless the command asks for workers (it overrides these: they come first)
    env.update(PYTEST_ADDOPTS="-p tests.docs_budget --hypothesis-profile=attnspec-docs -p no:cacheprovider -n 0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    script = script_of(block)
    done = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=block.options.get("timeout", 300))
    output = done.stdout + done.stderr
    assert done.returncode == block.options.get("returncode", 0), (
        f"{block.id}: exit code {done.returncode}, but the page says {block.options.get('returncode', 0)}\n"
        f"{script}\n{output[-4000:]}")
    for expected in block.options.get("expect", []):
        assert expected in output, f"{block.id}: {expected!r} is not in the output\n{output[-4000:]}"


# -- the snippets --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", SNIPPETS, ids=[b.id for b in SNIPPETS])
def test_python_snippet(block, monkeypatch):
    """The snippet is the file it names (its lines, in order), and it runs: on its own, in a fresh namespace."""
    same_as = block.options.get("same-as")
    if same_as:
        lines = iter((ROOT / same_as).read_text().splitlines())
        absent = [line for line in block.text.splitlines() if line.strip() and line not in lines]
        assert not absent, f"{block.id} is no longer {same_as}: from {absent[0]!r} on; copy the file's lines again"
    if block.options.get("exec", True):
        monkeypatch.syspath_prepend(str(ROOT))
        exec(compile(block.text, block.id, "exec"), {"__name__": f"snippet_{block.line}"})


def test_toml_blocks_parse():
    for b in ALL_BLOCKS:
        if b.lang == "toml":
            tomllib.loads(b.text)
