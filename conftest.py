"""Repository-wide pytest setup. The attnspec plugin itself (options, the conformance matrix) is
registered by the installed package's ``pytest11`` entry point and changes nothing global; this
repository's own self-tests run under attnspec's fast Hypothesis profile unless another is chosen."""
import pytest

try:
    import attnspec.profiles  # noqa: F401  (registers the attnspec profiles)
except ImportError as exc:  # the README's first command installs it
    raise pytest.UsageError(f"attnspec is not installed in this Python ({exc}): run "
                            "pip install torch==2.13.0 -e \".[test,thirdparty]\" first (README, Quick start)") from None

from hypothesis import settings  # noqa: E402

if settings.get_current_profile_name() == "default":
    settings.load_profile("attnspec")
