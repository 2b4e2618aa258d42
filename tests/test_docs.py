"""The README stays true: it lists every law with its statement, and its two commands; docs/kernels.md lists
every kernel law."""
from pathlib import Path

from attnspec.checks import LAWS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_lists_every_law_with_its_statement():
    missing = [name for name, law in LAWS.items()
               if law.contract == "module" and f"| `{name}` | {law.statement} |" not in README]
    assert not missing, f"README's law table lacks or misstates: {missing}"


def test_kernel_docs_list_every_kernel_law_with_its_statement():
    text = (ROOT / "docs" / "kernels.md").read_text()
    missing = [name for name, law in LAWS.items()
               if law.contract == "kernel" and f"| `{name}` | {law.statement} |" not in text]
    assert not missing, f"docs/kernels.md's law table lacks or misstates: {missing}"


def test_readme_has_the_two_commands():
    assert 'pip install torch==2.13.0 -e ".[test,thirdparty]"' in README
    assert "\npytest\n" in README
