"""Shared test configuration: hypothesis profiles.

``quick-fixed`` (used unless HYPOTHESIS_PROFILE names another) keeps the property tests fast
and reproducible for every CI run: the same examples each time, so a red run is a regression,
not the luck of the draw. ``quick`` draws fresh random examples (exploration; run it often);
``long`` is the robustness job, 500 fresh random examples per test in
tests/test_properties.py (run it by hand, and add what it finds as a fixed test):

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py

``long-ci`` is the bounded run `.ci/run` makes: 200 examples per test, 17 times the quick
profile's, but the same ones each run, so that CI, like ``quick-fixed``, goes red on a
regression and never on the luck of the draw.
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the test extra; without it only the property tests fail
    settings = None

_common = None if settings is None else dict(
    deadline=None,  # timings on a loaded CI machine say nothing about correctness
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)

if settings is not None:
    settings.register_profile("quick", max_examples=12, **_common)
    settings.register_profile("quick-fixed", max_examples=12, derandomize=True, **_common)
    settings.register_profile("long", max_examples=500, **_common)
    # .ci/run's bounded share of the long job: fresh random examples every run, sized to fit
    # its 3-minute bound with room on a loaded two-core machine (there the 500 examples of
    # `long` took 88 to 130 s, and 300 took 140 s at a load of 7)
    settings.register_profile("long-ci", max_examples=200, derandomize=True, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick-fixed"))
