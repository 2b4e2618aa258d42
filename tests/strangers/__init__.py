"""Kernels written from docs/kernels.md alone, in the canonical signature, correct and buggy: certified from an
empty folder with ``--impl`` and no adapter (tests/test_kernels.py), as a stranger's kernel would be."""
