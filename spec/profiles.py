"""Hypothesis profiles: ``attnspec`` (default, fast), ``attnspec-ci``, ``attnspec-thorough`` (nightly) and
``attnspec-quick`` (slow implementations: Triton's interpreter).

Their names start with ``attnspec`` so that a project's own profiles (a ``ci`` of its own) are never
replaced: registering a profile does not load it, and attnspec loads none (see :func:`active`).

Every example builds a module and calls it a few times, so examples are costly
and the budget is per law. Deadlines are off: torch's first calls are slow.
"""
from hypothesis import HealthCheck, settings

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]

PROFILES = {
    "attnspec": dict(max_examples=25),
    "attnspec-ci": dict(max_examples=25, derandomize=True, print_blob=True),  # reproducible CI runs
    "attnspec-thorough": dict(max_examples=400),
    # a kernel whose calls take a second (Triton's CPU interpreter): a few examples per law, reproducible
    "attnspec-quick": dict(max_examples=5, derandomize=True),
}

for _name, _kwargs in PROFILES.items():
    settings.register_profile(_name, deadline=None, suppress_health_check=SUPPRESS, report_multiple_bugs=False,
                              **_kwargs)


# Profiles Hypothesis loads by itself: "default", or "ci" where the environment variable CI is set
# (GitHub Actions, GitLab and most CI services set it). Neither is a choice of the user's, unless
# the user re-registered "ci" with an example count of their own.
AUTOMATIC = {"default": "attnspec", "ci": "attnspec-ci"}


def active() -> settings:
    """The loaded profile; ``attnspec`` (``attnspec-ci`` under CI) when Hypothesis loaded its own."""
    name = settings.get_current_profile_name() if hasattr(settings, "get_current_profile_name") \
        else getattr(settings, "_current_profile", "default")
    hypothesis_own = name == "default" or (
        name == "ci" and settings.get_profile("ci").max_examples == settings.get_profile("default").max_examples)
    return settings.get_profile(AUTOMATIC[name]) if hypothesis_own else settings.default
