"""Test-wide settings: hypothesis finds the same examples on every run and machine (no random
seed, no example database carried between runs, no deadline that a busy machine trips), so a
CI run cannot fail on an example that the previous run never tried. Examples it found once are
kept as explicit tests beside the properties."""

from hypothesis import HealthCheck, settings

settings.register_profile("pixelbeam", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pixelbeam")
