"""Suite-wide settings."""

import os

from hypothesis import settings

# Servers the tests start (in this process or as `covisit serve` processes, which inherit the
# environment) take any free port for their metrics endpoint, not the default 9464.
os.environ.setdefault("COVISIT_MONITOR_METRICS_PORT", "0")

# CI replays the same examples every run (a landing should not hinge on a lucky draw);
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
