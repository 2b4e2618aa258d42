"""A pytest plugin for the documentation's command tests (tests/test_docs.py): a small, reproducible budget.

The commands of README.md and docs/ run as written, with ``-p tests.docs_budget
--hypothesis-profile=attnspec-docs`` in ``PYTEST_ADDOPTS``: every law draws a handful of examples,
derandomized as in CI, so a command that breaks fails in seconds and always the same way.
"""
from hypothesis import settings

import attnspec.profiles  # noqa: F401  (registers attnspec-ci, the parent of the profile below)

EXAMPLES = 4

settings.register_profile("attnspec-docs", parent=settings.get_profile("attnspec-ci"), max_examples=EXAMPLES)
