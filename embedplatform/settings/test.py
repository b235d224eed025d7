"""Test overlay: the same settings, its own Redis DB number, fast hashing.

Tests use the servers named by DATABASE_URL / REDIS_URL (CI: the machine's PostgreSQL and
Redis) or, where those are unset, the embedded pair under VAR_DIR/test, started here.
pytest-django creates `test_<name>` databases, so a dev database is never touched; Redis
uses DB TEST_REDIS_DB (13) so a dev stack on DB 0 never collides with the tests.
"""

from __future__ import annotations

import atexit
import os
import re

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("ENCRYPTION_KEY", "wDBOYgsOnKWlkV5dGfXprVV5LyEOFKjykTMlm0XJa1Y=")  # a Fernet key, tests only
os.environ.setdefault("SYNC_WAIT_SECONDS", "20")

from embedplatform import embedded
from embedplatform.settings.base import *  # noqa: F403
from embedplatform.settings.base import EMBEDDED_DB, EMBEDDED_REDIS, VAR_DIR, env

TEST_REDIS_DB = env.int("TEST_REDIS_DB", default=13)
TEST_VAR_DIR = VAR_DIR / "test"

if EMBEDDED_DB or EMBEDDED_REDIS:
    embedded.ensure_var_dir(TEST_VAR_DIR)
    if EMBEDDED_DB:
        _pg = embedded.start_postgres(TEST_VAR_DIR)
        atexit.register(embedded.stop_postgres, _pg)
        DATABASES = {
            "default": {
                **env.db_url_config(embedded.database_url(TEST_VAR_DIR)),
                "ENGINE": "django.db.backends.postgresql",
                "CONN_MAX_AGE": 0,
            }
        }
    if EMBEDDED_REDIS:
        _redis = embedded.start_redis(TEST_VAR_DIR)
        atexit.register(embedded.stop_redis, _redis)
        REDIS_URL = embedded.redis_url(TEST_VAR_DIR, TEST_REDIS_DB)  # type: ignore[misc]  # overlays base's Final
        CELERY_BROKER_URL = embedded.broker_url(TEST_VAR_DIR, TEST_REDIS_DB)
    atexit.register(embedded.quiet_logs)  # atexit runs last-in first-out: this goes first

if not EMBEDDED_REDIS:
    # Same server, the tests' own DB number.
    REDIS_URL = re.sub(  # type: ignore[misc]  # overlays base's Final
        r"(redis://[^/?]+)(/\d+)?", rf"\1/{TEST_REDIS_DB}", env.str("REDIS_URL"), count=1)
    if "CELERY_BROKER_URL" not in env or env.str("CELERY_BROKER_URL") == env.str("REDIS_URL"):
        CELERY_BROKER_URL = REDIS_URL

CACHES = {"default": {**CACHES["default"], "LOCATION": REDIS_URL, "KEY_PREFIX": "ept"}}  # noqa: F405 (timeouts kept)
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = DATABASE_CONNECT_TIMEOUT  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-process Celery workers of the tests serve no metrics port (a test that wants one asks).
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
