"""Every setting, read from the environment (django-environ).

Where DATABASE_URL / REDIS_URL are unset, the embedded PostgreSQL and Redis under VAR_DIR
are used (see embedplatform/embedded.py; `make services` starts them). Secrets that are
unset on that embedded path are generated once and kept under VAR_DIR; in production
(a DATABASE_URL is set and DEBUG is off) a missing SECRET_KEY stops start-up.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Final

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from embedplatform import embedded
from embedplatform.clientip import trusted_networks

BASE_DIR: Final = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

DEBUG: bool = env.bool("DEBUG", default=False)
VAR_DIR: Final = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
EMBEDDED_DB: Final = "DATABASE_URL" not in env
EMBEDDED_REDIS: Final = "REDIS_URL" not in env


def _secret(name: str, generate: Callable[[], str] = lambda: secrets.token_urlsafe(50),
            hint: str = "any long random string") -> str:
    """A secret from the env, or (embedded/dev path only) one generated once under VAR_DIR."""
    value = env.str(name, default="")
    if value:
        return value
    if not (EMBEDDED_DB or DEBUG):
        raise ImproperlyConfigured(
            f"{name} is not set. Production mode (DATABASE_URL set, DEBUG off) needs it: "
            f"export {name}=... ({hint})."
        )
    path = VAR_DIR / f"{name.lower()}.txt"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(generate())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret("SECRET_KEY")
# Fernet keys for provider secrets, a comma list: the first encrypts, all decrypt (providers/crypto.py).
ENCRYPTION_KEY = _secret(
    "ENCRYPTION_KEY",
    generate=lambda: Fernet.generate_key().decode(),
    hint='a Fernet key: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"',
)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "django_prometheus",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served from here: /api/docs works offline
    "accounts",
    "embeddings",
    "providers",
    "batches",  # OpenAI's Batch API (/v1/files, /v1/batches) on top of jobs
    "workers",
    "embedplatform.apps.PlatformConfig",  # the project's own system checks (embedplatform/checks.py)
]

MIDDLEWARE = [
    "embedplatform.logs.RequestIdMiddleware",  # first: every later line of a request carries its id
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The admin's CSS/JS under granian with DEBUG off, straight from the apps (no collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sessions, CSRF, request.user and messages: the admin's and the docs', skipped on /v1/,
    # /health/ and /metrics, which authenticate each request themselves (embedplatform/middleware.py).
    "embedplatform.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # X-Frame-Options: DENY on every answer (the admin's pages must never be framed: clickjacking).
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "embedplatform.middleware.CsrfViewMiddleware",
    "embedplatform.middleware.AuthenticationMiddleware",
    "embedplatform.middleware.MessageMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, so its process_exception runs first: a Redis/database error that escaped a view is a
    # 503 with Retry-After (or a 400 for a value the database refuses), not Django's 500.
    "embedplatform.middleware.DependencyErrorMiddleware",
]

ROOT_URLCONF = "embedplatform.urls"
WSGI_APPLICATION = "embedplatform.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
# Unset: WhiteNoise serves the apps' files directly (finders); set it to serve a collectstatic tree.
STATIC_ROOT = env.str("STATIC_ROOT", default="") or None
# https://whitenoise.readthedocs.io/en/stable/django.html#WHITENOISE_USE_FINDERS
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False
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
# A health check is one more round trip before every request's first query (a quarter of a
# cache hit's database time). Off by default: a connection broken by a database restart fails
# its request with 503 (embedplatform/errors.py) and is then replaced.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
# libpq's connect_timeout (seconds, at least 2): a database that is down or unreachable fails a
# request with 503 (embedplatform/errors.py) within this time instead of the OS's minutes.
DATABASE_CONNECT_TIMEOUT: Final = env.int("DATABASE_CONNECT_TIMEOUT", default=5)
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = DATABASE_CONNECT_TIMEOUT

# --- Redis -------------------------------------------------------------------------------
REDIS_URL: Final = env.str("REDIS_URL", default="") or embedded.redis_url(VAR_DIR)

# Every Redis client (embedplatform/redisconn.py, the Django cache, the Celery broker) connects
# within REDIS_CONNECT_TIMEOUT and waits at most REDIS_SOCKET_TIMEOUT for a reply: a Redis that
# is down or cut off answers 503 within seconds instead of hanging web threads. Blocking waits
# (BLPOP) wait in slices shorter than the socket timeout (embedplatform/redisconn.py).
REDIS_CONNECT_TIMEOUT: Final = env.float("REDIS_CONNECT_TIMEOUT", default=2.0)
REDIS_SOCKET_TIMEOUT: Final = env.float("REDIS_SOCKET_TIMEOUT", default=5.0)
if not (REDIS_CONNECT_TIMEOUT > 0 and REDIS_SOCKET_TIMEOUT >= 2):
    raise ImproperlyConfigured(
        f"REDIS_CONNECT_TIMEOUT={REDIS_CONNECT_TIMEOUT}, REDIS_SOCKET_TIMEOUT={REDIS_SOCKET_TIMEOUT}: the connect "
        "timeout must be over 0 s and the socket timeout at least 2 s (the workers' BLPOPs block 1 s at a time)."
    )

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "ep",
        # https://github.com/jazzband/django-redis#socket-timeout
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT, "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT},
    }
}
# The broker's clients (settings/celery.py holds the rest of the CELERY_ block). kombu's BRPOP
# blocks for brpop_timeout (1 s) at a time, well inside the socket timeout; kombu drops the
# keepalive/connect options itself for a unix socket (the embedded Redis).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_keepalive": True,
}

# --- Embedding -----------------------------------------------------------------------------
# EMBED_MODELS: a JSON string or a path to a JSON file; see embeddings/registry.py.
EMBED_MODELS: str = env.str("EMBED_MODELS", default="")
# Other names for served models: JSON {"alias": "model"} or `alias=model,alias=model`. Unset: OpenAI's
# embedding model names stand for the default model; empty: no aliases (embeddings/registry.py).
EMBED_MODEL_ALIASES: str | None = env.str("EMBED_MODEL_ALIASES", default=None)
EMBED_DEVICE: str = env.str("EMBED_DEVICE", default=env.str("DEVICE", default="cpu"))
# CPU only: model threads of a worker, for all its passes when set (0 = passes of 3+ texts half
# the cores, at least one, since they share the machine with the web tier; passes of one or two
# texts all of them: workers/devices.py cpu_threads).
EMBED_THREADS: int = env.int("EMBED_THREADS", default=0)
# Drain loops per worker process, each running its own forward passes (0 = as many as the model
# runtime runs well side by side: two on a CPU but for bfloat16 on AMX, else one; DECISIONS #22, #23).
EMBED_DRAIN_THREADS: int = env.int("EMBED_DRAIN_THREADS", default=0)
if EMBED_DRAIN_THREADS < 0:
    raise ImproperlyConfigured(f"EMBED_DRAIN_THREADS={EMBED_DRAIN_THREADS}: use 0 (automatic) or a count.")
# What runs the transformer: `onnx` (ONNX Runtime, exported once under VAR_DIR/onnx; CPU only)
# or `torch`. Default: onnx on the CPU, torch on a GPU (workers/runtime.py, DECISIONS #20).
# An EMBED_MODELS entry's own "backend" wins over this one.
EMBED_BACKEND: str = env.str("EMBED_BACKEND", default="onnx" if EMBED_DEVICE == "cpu" else "torch")
if EMBED_BACKEND not in ("auto", "onnx", "torch"):
    raise ImproperlyConfigured(f"EMBED_BACKEND={EMBED_BACKEND!r}: use auto, onnx (CPU) or torch.")
# On a CPU, `auto` runs passes of 3+ texts with bfloat16 matrix products where the CPU has AMX
# or AVX512-BF16, `fp32` never, `bf16` even without them (slow there; for tests), `int8` every
# pass on the ONNX export quantized to int8 weights, `fp16` float32 (logged). On a GPU, `auto`
# and `fp16` run float16 autocast, `bf16` bfloat16 autocast. A reduced precision is checked
# against float32 at load (EMBED_MIN_COSINE, EMBED_MIN_NEIGHBOUR_OVERLAP) and the model stays
# in float32 where it falls short. An EMBED_MODELS entry's own "precision" wins over this one.
# workers/backends.py, DECISIONS #21, #23, #39.
EMBED_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
EMBED_PRECISION: str = env.str("EMBED_PRECISION", default="auto")
if EMBED_PRECISION not in EMBED_PRECISIONS:
    raise ImproperlyConfigured(f"EMBED_PRECISION={EMBED_PRECISION!r}: use {', '.join(EMBED_PRECISIONS)}.")
# The load check of a reduced precision against float32, on 64 fixed sample texts: the lowest
# cosine and the mean share of each text's top-10 neighbours that stay its top 10.
EMBED_MIN_COSINE: float = env.float("EMBED_MIN_COSINE", default=0.99)
EMBED_MIN_NEIGHBOUR_OVERLAP: float = env.float("EMBED_MIN_NEIGHBOUR_OVERLAP", default=0.9)
for _name, _value in (("EMBED_MIN_COSINE", EMBED_MIN_COSINE), ("EMBED_MIN_NEIGHBOUR_OVERLAP",
                                                              EMBED_MIN_NEIGHBOUR_OVERLAP)):
    if not 0 <= _value <= 1:
        raise ImproperlyConfigured(f"{_name}={_value}: use a number from 0 to 1.")
# The models a `scripts/run.py worker` serves: a comma list of EMBED_MODELS names, or `all` (unset:
# all). Each model has its own work list, drained by every worker that serves it, so workers with
# different lists split the models and several workers may share one. The names are checked
# against EMBED_MODELS where the worker starts (scripts/run.py), which alone reads the registry.
_worker_models = env.str("WORKER_MODELS", default="all").strip()
WORKER_MODELS: list[str] = ([] if _worker_models in ("", "all") else
                            list(dict.fromkeys(n.strip() for n in _worker_models.split(",") if n.strip())))
if _worker_models not in ("", "all") and not WORKER_MODELS:
    raise ImproperlyConfigured(f"WORKER_MODELS={_worker_models!r}: use model names, comma-separated, or all.")
# Where exported ONNX models are kept (one file per model version and exporter).
EMBED_ONNX_DIR: Path = Path(env.str("EMBED_ONNX_DIR", default=str(VAR_DIR / "onnx"))).resolve()
# A forward pass takes at most this many texts. On a GPU bigger passes pay, on a CPU they do not
# (DECISIONS #17; docs/BENCHMARKS.md, "GPU check").
MAX_BATCH_TEXTS: int = env.int("MAX_BATCH_TEXTS", default=256 if EMBED_DEVICE.startswith("cuda") else 64)
MAX_BATCH_TOKENS: int = env.int("MAX_BATCH_TOKENS", default=16384)
MAX_QUEUE_DEPTH: int = env.int("MAX_QUEUE_DEPTH", default=10000)
SYNC_WAIT_SECONDS: float = env.float("SYNC_WAIT_SECONDS", default=30.0)
# The longest `wait` a request may ask for (400 above it): a waiting request holds a web thread.
SYNC_WAIT_MAX: float = env.float("SYNC_WAIT_MAX", default=60.0)
if SYNC_WAIT_MAX <= 0:
    raise ImproperlyConfigured(f"SYNC_WAIT_MAX={SYNC_WAIT_MAX}: use a number of seconds over 0.")
# Request limits (before any tier limit): body size, inputs per request, chars per input.
MAX_REQUEST_BYTES: int = env.int("MAX_REQUEST_BYTES", default=8 * 1024 * 1024)
MAX_INPUTS_PER_REQUEST: int = env.int("MAX_INPUTS_PER_REQUEST", default=2048)
MAX_INPUT_CHARS: int = env.int("MAX_INPUT_CHARS", default=100_000)

# --- BYOK providers (providers/) ------------------------------------------------------------
# Exceptions to the SSRF guard: "host" or "host:port" entries that may be private or use http.
PROVIDER_ALLOWED_HOSTS: list[str] = env.list("PROVIDER_ALLOWED_HOSTS", default=[])
# One upstream attempt (connect + read); the whole call is also bounded by the waiter's deadline.
PROVIDER_TIMEOUT_SECONDS: float = env.float("PROVIDER_TIMEOUT_SECONDS", default=20.0)
PROVIDER_MAX_RETRIES: int = env.int("PROVIDER_MAX_RETRIES", default=3)
# POST /v1/providers/{id}/test runs in the web thread: its whole call, retries included, ends
# within this many seconds; each tenant may test this often (django-ratelimit's "N/m" form).
PROVIDER_TEST_TIMEOUT_SECONDS: float = env.float("PROVIDER_TEST_TIMEOUT_SECONDS", default=5.0)
PROVIDER_TEST_RATE: str = env.str("PROVIDER_TEST_RATE", default="10/m")
# Longest backoff (and Retry-After) honored between attempts; longer waits fail at once.
PROVIDER_MAX_BACKOFF_SECONDS: float = env.float("PROVIDER_MAX_BACKOFF_SECONDS", default=10.0)
# The most bytes read from one upstream response, counted while streaming it (the call fails as
# soon as it is over, 502), so a huge body never sits in memory.
PROVIDER_MAX_RESPONSE_BYTES: int = env.int("PROVIDER_MAX_RESPONSE_BYTES", default=32 * 1024 * 1024)
# The widest upstream vector accepted (a wider one is a 502 naming this limit; nothing is stored):
# a tenant's cache costs dims x 4 bytes per text, so this bounds what one text can store.
PROVIDER_MAX_DIMS: int = env.int("PROVIDER_MAX_DIMS", default=8192)
# Texts per upstream call never exceed this, nor the preset's own limit.
PROVIDER_MAX_INPUTS_PER_CALL: int = env.int("PROVIDER_MAX_INPUTS_PER_CALL", default=256)

# --- DRF ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # An API key (`ep_...`) or a simplejwt access token, both as `Authorization: Bearer ...`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.JwtAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Bodies are JSON whatever they are labelled: curl's form type, text/plain, or no Content-Type at all
    # (the negotiation reads an unlabelled body with the first parser) are read as JSON, never a 415.
    "DEFAULT_PARSER_CLASSES": ["embedplatform.parsers.JSONParser", "embedplatform.parsers.CurlJSONParser",
                               "embedplatform.parsers.PlainTextJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "embedplatform.parsers.ContentNegotiation",
    "DEFAULT_RENDERER_CLASSES": ["embedplatform.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "embedplatform.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # ?format= belongs to our API (jobs results: ?format=jsonl), not to DRF's renderer switch.
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# --- OpenAPI (drf-spectacular): GET /api/schema, Swagger UI at GET /api/docs ----------------
# https://drf-spectacular.readthedocs.io/en/latest/settings.html
SPECTACULAR_SETTINGS = {
    "TITLE": "Embedding platform API",
    "DESCRIPTION": (
        "Multi-tenant embeddings with a durable cache: OpenAI-compatible `POST /v1/embeddings`, "
        "single and batch endpoints, async jobs, BYOK providers, API keys and usage.\n\n"
        "Authenticate with `Authorization: Bearer <api key>` (from sign-up or `POST /v1/keys`) or "
        "`Bearer <JWT access token>` (from `POST /v1/auth/login`). Managing keys and providers needs "
        "the JWT. Every error is OpenAI's envelope: "
        '`{"error": {"message", "type", "param", "code"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],  # the schema and docs are public; a stale token must not 401 them
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayOperationId": False},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "embedplatform.schemas.postprocess_schema",
        "embedplatform.openapi_links.postprocess_links",  # sign-up -> login -> keys/providers, ...
    ],
}

# --- Accounts, JWT, limits -----------------------------------------------------------------
# https://django-rest-framework-simplejwt.readthedocs.io/en/latest/settings.html
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_ACCESS_SECONDS", default=15 * 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_REFRESH_SECONDS", default=7 * 24 * 3600)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": True,  # POST /v1/auth/login sets User.last_login (one UPDATE per login)
}
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Data plane: requests per minute per key, in the one Lua round trip of accounts/quotas.admit.
# Login: django-ratelimit, counting in the Redis cache above, per client IP and per email.
RATELIMIT_USE_CACHE = "default"
# How long a web process may keep an API key (with tenant and tier) in memory: changes reach
# it at once through the auth epoch (accounts/authcache.py); this bounds a lost invalidation.
AUTH_CACHE_SECONDS: float = env.float("AUTH_CACHE_SECONDS", default=60.0)
# Each web process keeps recently served vectors in memory, in front of the Postgres cache
# (embeddings/hotcache.py; vectors never go stale). 0 turns it off.
HOT_CACHE_MB: float = env.float("HOT_CACHE_MB", default=64.0)
# Per-address limits (accounts/throttles.py) count by the client's address
# (embedplatform/clientip.py): REMOTE_ADDR, or, when that peer is one of TRUSTED_PROXIES (a comma
# list of IPs or CIDRs of your reverse proxies; empty: trust none), the right-most
# X-Forwarded-For entry that is not a trusted proxy. Rates are django-ratelimit's "N/period"
# (s, m, h, d; "10/15m" = 10 per 15 minutes), each refusal a 429 with Retry-After.
TRUSTED_PROXIES: list[str] = env.list("TRUSTED_PROXIES", default=[])
# Login: every attempt counts per address; only FAILED ones count per (address, email) and per
# email, so a stranger who knows an email cannot lock its owner out. Past LOGIN_RATE_EMAIL only
# an address without a failure for that email may still try (one guess each).
LOGIN_RATE_IP: str = env.str("LOGIN_RATE_IP", default="30/m")
LOGIN_RATE_IP_EMAIL: str = env.str("LOGIN_RATE_IP_EMAIL", default="10/15m")
LOGIN_RATE_EMAIL: str = env.str("LOGIN_RATE_EMAIL", default="50/h")
# Sign-up per address: each one costs a slow password hash and makes a tenant.
SIGNUP_RATE_IP: str = env.str("SIGNUP_RATE_IP", default="5/h")
# /admin/login/: every POST per address; failed ones per (address, username).
ADMIN_LOGIN_RATE_IP: str = env.str("ADMIN_LOGIN_RATE_IP", default="10/m")
ADMIN_LOGIN_RATE_IP_USER: str = env.str("ADMIN_LOGIN_RATE_IP_USER", default="5/15m")
for _name in ("LOGIN_RATE_IP", "LOGIN_RATE_IP_EMAIL", "LOGIN_RATE_EMAIL", "SIGNUP_RATE_IP", "ADMIN_LOGIN_RATE_IP",
              "ADMIN_LOGIN_RATE_IP_USER"):
    if not re.fullmatch(r"[1-9]\d*/\d*[smhd]", globals()[_name]):
        raise ImproperlyConfigured(f"{_name}={globals()[_name]!r}: use a count per period, e.g. 10/m, 5/h or 10/15m.")
try:
    trusted_networks(tuple(TRUSTED_PROXIES))
except ValueError as _exc:
    raise ImproperlyConfigured(str(_exc)) from None
# Usage counters wait in Redis and reach Postgres in batches (celery beat, and on GET /v1/usage).
USAGE_FLUSH_SECONDS: float = env.float("USAGE_FLUSH_SECONDS", default=10.0)
# Cache entries not used (hit, else created) for this many days are deleted daily by beat
# (workers.cache_prune, embeddings/retention.py; the schedule is in settings/celery.py).
# Unset: the cache is kept forever (`manage.py cache_prune` still prunes by hand).
CACHE_RETENTION_DAYS: int | None = env.int("CACHE_RETENTION_DAYS", default=None)
# A tenant's cache is capped at its tier's max_cache_bytes (embeddings/cachecap.py): the writers
# keep each tenant's byte count in Redis and recount it from Postgres this often (this also
# bounds how long a tier change or the retention prune takes to show in the cap).
CACHE_CAP_RECOUNT_SECONDS: int = env.int("CACHE_CAP_RECOUNT_SECONDS", default=300)
if CACHE_RETENTION_DAYS is not None and CACHE_RETENTION_DAYS < 1:
    raise ImproperlyConfigured(f"CACHE_RETENTION_DAYS={CACHE_RETENTION_DAYS}: use a number of days (1 or more), "
                               "or leave it unset to keep the cache forever.")

# --- Logs and metrics (embedplatform/logs.py, embedplatform/metrics.py) -------------------------
# JSON lines on stderr (LOG_FORMAT=text for people), each with the request id that follows a
# request into its Celery tasks and batches. Celery uses this same dict (embedplatform/celery.py).
LOG_FORMAT: str = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or text.")
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "embedplatform.logs.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "embedplatform.logs.JsonFormatter"},
        "text": {"()": "embedplatform.logs.TextFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.request": {"level": "ERROR"}},
}
# Each Celery worker serves its own metrics here (0: off); give workers on one host distinct ports.
WORKER_METRICS_PORT: int = env.int("WORKER_METRICS_PORT", default=9808)
WORKER_METRICS_ADDR: str = env.str("WORKER_METRICS_ADDR", default="0.0.0.0")
# /health/ready answers from a per-process cache this old at most, so probes stay cheap.
HEALTH_CACHE_SECONDS: float = env.float("HEALTH_CACHE_SECONDS", default=2.0)
# GET /metrics on the web answers only `Authorization: Bearer <METRICS_TOKEN>` when set (Prometheus:
# `authorization: {credentials: ...}`); unset, it is open (`check --deploy` warns). The workers'
# ports above have no token: keep them on a private network or WORKER_METRICS_ADDR=127.0.0.1.
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")

# --- Deployment behind TLS (`manage.py check --deploy` is clean with BEHIND_TLS=true) -----------
# One switch for a site served over https (a TLS-terminating proxy in front of granian): secure
# session/CSRF cookies, HSTS, http -> https redirects, and trusting the proxy's
# X-Forwarded-Proto. Off by default, so `make run` on plain http://localhost keeps admin logins
# working. Each setting below can also be set on its own.
BEHIND_TLS: bool = env.bool("BEHIND_TLS", default=False)
SESSION_COOKIE_SECURE: bool = env.bool("SESSION_COOKIE_SECURE", default=BEHIND_TLS)
CSRF_COOKIE_SECURE: bool = env.bool("CSRF_COOKIE_SECURE", default=BEHIND_TLS)
SECURE_SSL_REDIRECT: bool = env.bool("SECURE_SSL_REDIRECT", default=BEHIND_TLS)
# Probes and scrapes reach the web directly over plain http: never redirected (paths without "/").
SECURE_REDIRECT_EXEMPT: list[str] = [r"^health/", r"^metrics$"]
SECURE_HSTS_SECONDS: int = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if BEHIND_TLS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS: bool = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=BEHIND_TLS)
SECURE_HSTS_PRELOAD: bool = env.bool("SECURE_HSTS_PRELOAD", default=BEHIND_TLS)
# "HEADER,value": a request is https when the proxy set this header to this value (Django's
# SECURE_PROXY_SSL_HEADER). Only safe when the proxy always sets or strips that header.
# Default with BEHIND_TLS: X-Forwarded-Proto: https; "" turns it off (granian terminating TLS itself).
_proxy_ssl = env.str("SECURE_PROXY_SSL_HEADER", default="HTTP_X_FORWARDED_PROTO,https" if BEHIND_TLS else "")
if _proxy_ssl and not re.fullmatch(r"HTTP_[A-Z0-9_]+,[^,\s]+", _proxy_ssl):
    raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_proxy_ssl!r}: use HEADER,value as Django names it, "
                               "e.g. HTTP_X_FORWARDED_PROTO,https (or leave it empty).")
SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = tuple(_proxy_ssl.split(",", 1)) if _proxy_ssl else None
# Origins (scheme://host[:port]) besides the site's own whose POSTs the admin accepts.
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
X_FRAME_OPTIONS = "DENY"  # XFrameOptionsMiddleware: no page of this site is shown in a frame
# security.W003 looks for Django's CsrfViewMiddleware by its exact path and cannot see ours (its
# subclass, skipped on the API: embedplatform/middleware.py); embedplatform.checks checks it and
# CSRF_COOKIE_SECURE instead (Django's W016 is skipped along with W003).
SILENCED_SYSTEM_CHECKS: list[str] = ["security.W003"]

from embedplatform.settings.celery import *  # noqa: E402,F403
from embedplatform.settings.celery import beat_schedule  # noqa: E402

# --- Jobs --------------------------------------------------------------------------------
JOB_MAX_TEXTS: int = env.int("JOB_MAX_TEXTS", default=100_000)  # hard cap; tiers set their own max_job_texts
JOB_MAX_REQUEST_BYTES: int = env.int("JOB_MAX_REQUEST_BYTES", default=64 * 1024 * 1024)
JOB_CHUNK_TEXTS: int = env.int("JOB_CHUNK_TEXTS", default=64)  # texts per JobChunk row
# Texts a worker claims per job pass (whole chunks; forward passes inside stay MAX_BATCH_TEXTS).
# Bigger passes spread the per-pass database work; a sync request may wait one pass.
JOB_PASS_TEXTS: int = env.int("JOB_PASS_TEXTS", default=max(128, MAX_BATCH_TEXTS))
JOB_LEASE_SECONDS: int = env.int("JOB_LEASE_SECONDS", default=120)  # a claimed chunk not done by then is re-queued
JOB_MAX_ATTEMPTS: int = env.int("JOB_MAX_ATTEMPTS", default=5)  # claims of one chunk before the job fails
JOB_POLL_SECONDS: float = env.float("JOB_POLL_SECONDS", default=1.0)  # idle workers look for chunks this often
JOB_SWEEP_SECONDS: float = env.float("JOB_SWEEP_SECONDS", default=30.0)
# One webhook delivery, all of it (connect, send, status, body): a total deadline, not per read.
WEBHOOK_TIMEOUT_SECONDS: float = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# We only need the receiver's status: at most this many bytes of its response body are read.
WEBHOOK_MAX_RESPONSE_BYTES: int = env.int("WEBHOOK_MAX_RESPONSE_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(MAX_REQUEST_BYTES, JOB_MAX_REQUEST_BYTES)

# --- Batch API (batches/: /v1/files, /v1/batches) -----------------------------------------------
# An uploaded file's size limit (413 above it; OpenAI's is 200 MB). Files are kept in Postgres.
BATCH_MAX_FILE_BYTES: int = env.int("BATCH_MAX_FILE_BYTES", default=100 * 1024 * 1024)
# Requests (lines) per batch, as OpenAI's 50,000; their inputs together are bounded by the tier's max_job_texts.
BATCH_MAX_REQUESTS: int = env.int("BATCH_MAX_REQUESTS", default=50_000)
BATCH_FILE_PART_BYTES: int = env.int("BATCH_FILE_PART_BYTES", default=4 * 1024 * 1024)  # bytes per stored row
# A read that finalizes a batch (writes its output file) holds it this long; then another read may take over.
BATCH_FINALIZE_LEASE_SECONDS: int = env.int("BATCH_FINALIZE_LEASE_SECONDS", default=300)
# Prefix of the status_url / results_url links in job payloads ("" = relative links).
PUBLIC_BASE_URL: str = env.str("PUBLIC_BASE_URL", default="").rstrip("/")

# celery beat's timetable, from the settings above (settings/celery.py builds it).
CELERY_BEAT_SCHEDULE = beat_schedule(usage_flush_seconds=USAGE_FLUSH_SECONDS, job_sweep_seconds=JOB_SWEEP_SECONDS,
                                     cache_retention_days=CACHE_RETENTION_DAYS or 0)
