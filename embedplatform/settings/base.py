"""Every setting, read from the environment (django-environ).

Where DATABASE_URL / REDIS_URL are unset, the embedded PostgreSQL and Redis under VAR_DIR
are used (see embedplatform/embedded.py; `make services` starts them). Secrets that are
unset on that embedded path are generated once and kept under VAR_DIR; in production
(a DATABASE_URL is set and DEBUG is off) a missing SECRET_KEY stops start-up.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Final

import environ
from django.core.exceptions import ImproperlyConfigured

from embedplatform import embedded

BASE_DIR: Final = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

DEBUG: bool = env.bool("DEBUG", default=False)
VAR_DIR: Final = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
EMBEDDED_DB: Final = "DATABASE_URL" not in env
EMBEDDED_REDIS: Final = "REDIS_URL" not in env


def _secret(name: str) -> str:
    """A secret from the env, or (embedded/dev path only) one generated once under VAR_DIR."""
    value = env.str(name, default="")
    if value:
        return value
    if not (EMBEDDED_DB or DEBUG):
        raise ImproperlyConfigured(
            f"{name} is not set. Production mode (DATABASE_URL set, DEBUG off) needs it: "
            f"export {name}=... (any long random string)."
        )
    path = VAR_DIR / f"{name.lower()}.txt"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret("SECRET_KEY")
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_prometheus",
    "accounts",
    "embeddings",
    "workers",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "embedplatform.urls"
WSGI_APPLICATION = "embedplatform.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- PostgreSQL --------------------------------------------------------------------------
DATABASE_URL: Final = env.str("DATABASE_URL", default="") or embedded.database_url(VAR_DIR)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
# Persistent connections: a connect per request would cost more than the whole cache hit.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# --- Redis -------------------------------------------------------------------------------
REDIS_URL: Final = env.str("REDIS_URL", default="") or embedded.redis_url(VAR_DIR)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "ep",
    }
}

# --- Embedding -----------------------------------------------------------------------------
# EMBED_MODELS: a JSON string or a path to a JSON file; see embeddings/registry.py.
EMBED_MODELS: str = env.str("EMBED_MODELS", default="")
EMBED_DEVICE: str = env.str("EMBED_DEVICE", default=env.str("DEVICE", default="cpu"))
# CPU only: torch intra-op threads of a worker (0 = torch's default, one per core).
EMBED_THREADS: int = env.int("EMBED_THREADS", default=0)
MAX_BATCH_TEXTS: int = env.int("MAX_BATCH_TEXTS", default=64)
MAX_BATCH_TOKENS: int = env.int("MAX_BATCH_TOKENS", default=16384)
MAX_QUEUE_DEPTH: int = env.int("MAX_QUEUE_DEPTH", default=10000)
SYNC_WAIT_SECONDS: float = env.float("SYNC_WAIT_SECONDS", default=30.0)
# Request limits (before any tier limit): body size, inputs per request, chars per input.
MAX_REQUEST_BYTES: int = env.int("MAX_REQUEST_BYTES", default=8 * 1024 * 1024)
MAX_INPUTS_PER_REQUEST: int = env.int("MAX_INPUTS_PER_REQUEST", default=2048)
MAX_INPUT_CHARS: int = env.int("MAX_INPUT_CHARS", default=100_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

# --- DRF ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["embedplatform.parsers.JSONParser", "embedplatform.parsers.CurlJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["embedplatform.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "embedplatform.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

from embedplatform.settings.celery import *  # noqa: E402,F403
