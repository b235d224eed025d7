"""The CELERY_* block (read by embedplatform/celery.py with namespace="CELERY")."""

from __future__ import annotations

import environ
from celery.schedules import crontab

from embedplatform import embedded
from workers.queues import PROVIDER_QUEUE

env = environ.Env()
_var_dir = env.str("VAR_DIR", default="")

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
if "CELERY_BROKER_URL" in env:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
elif "REDIS_URL" in env:
    CELERY_BROKER_URL = embedded.celery_broker_for(env.str("REDIS_URL"))
else:
    from pathlib import Path

    _base = Path(__file__).resolve().parent.parent.parent
    CELERY_BROKER_URL = embedded.broker_url(Path(_var_dir or _base / "var").resolve())

# JSON only: no pickle on the wire.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
# Results travel through our own Redis reply keys and Postgres; the result backend is off.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Redelivery is harmless (idempotent upserts), so ack after the work, not before.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 600
CELERY_TASK_SOFT_TIME_LIMIT = 540
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"  # workers/queues.py DEFAULT_QUEUE
# Routes: every embedding task names its model queue at call time (workers/queues.py); BYOK
# provider calls go to the provider queue, drained by an I/O-bound threads worker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-routes
CELERY_TASK_ROUTES = {"workers.provider_embed": {"queue": PROVIDER_QUEUE}}

# Periodic work, run by `celery -A embedplatform beat` (make run starts it; compose has a beat service).
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
CELERY_BEAT_SCHEDULE = {
    "usage-flush": {"task": "workers.usage_flush", "schedule": env.float("USAGE_FLUSH_SECONDS", default=10.0)},
    "job-sweep": {"task": "workers.job_sweep", "schedule": env.float("JOB_SWEEP_SECONDS", default=30.0)},
}
# Cache retention, once a day at a quiet hour (UTC), only where CACHE_RETENTION_DAYS is set
# (settings/base.py checks the value; the task reads it from settings).
if env.int("CACHE_RETENTION_DAYS", default=0) > 0:
    CELERY_BEAT_SCHEDULE["cache-prune"] = {"task": "workers.cache_prune", "schedule": crontab(hour=3, minute=17)}
