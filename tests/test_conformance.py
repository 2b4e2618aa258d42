"""Every law on every selected implementation (bundled by default, or --impl) on CPU and CUDA."""
from attnspec.suite import test_conformance  # noqa: F401  (parametrised by the attnspec plugin)
