"""Suite-wide settings."""

import os

from hypothesis import settings

# CI replays the same examples every run (a landing should not hinge on a lucky draw);
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
