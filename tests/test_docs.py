"""The README stays true: it lists every law with its statement, and its two commands."""
from pathlib import Path

from attnspec.checks import LAWS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_law_with_its_statement():
    missing = [name for name, law in LAWS.items() if f"| `{name}` | {law.statement} |" not in README]
    assert not missing, f"README's law table lacks or misstates: {missing}"


def test_readme_has_the_two_commands():
    assert 'pip install torch==2.13.0 -e ".[test,thirdparty]"' in README
    assert "\npytest\n" in README
