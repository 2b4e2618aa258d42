"""Repository-wide pytest setup. The attnspec plugin itself (options, the conformance matrix) is
registered by the installed package's ``pytest11`` entry point and changes nothing global; this
repository's own self-tests run under attnspec's fast Hypothesis profile unless another is chosen."""
from hypothesis import settings

import attnspec.profiles  # noqa: F401  (registers the attnspec profiles)

if settings.get_current_profile_name() == "default":
    settings.load_profile("attnspec")
