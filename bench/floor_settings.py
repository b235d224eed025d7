"""The platform's settings with bench/floor_urls.py as the URL conf: what bench/e2e.py's web runs,
so that the floor view and the API are served by the same processes and threads in one run."""

from embedplatform.settings.base import *  # noqa: F403

ROOT_URLCONF = "bench.floor_urls"
