"""Shared test configuration: Hypothesis profiles.

``ci`` (default under CI) keeps the suite within budget; ``extended`` is for
long runs (``HYPOTHESIS_PROFILE=extended make test``).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("extended", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
