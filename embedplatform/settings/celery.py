"""The CELERY_* block (read by embedplatform/celery.py with namespace="CELERY")."""

from __future__ import annotations

from pathlib import Path

import environ
from celery.schedules import crontab

from dispatch.keys import PROVIDER_EMBED_TASK, PROVIDER_QUEUE
from embedplatform import embedded

env = environ.Env()
_var_dir = env.str("VAR_DIR", default="")

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
if "CELERY_BROKER_URL" in env:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
elif "REDIS_URL" in env:
    CELERY_BROKER_URL = embedded.celery_broker_for(env.str("REDIS_URL"))
else:
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
# Task events (what Flower's task list and counters are made of), on by default; the embedding
# workers report each drain-loop pass as a task too (workers/taskevents.py). WORKER_TASK_EVENTS=false
# turns them off (a running Flower turns them back on every few seconds: `celery control enable_events`).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("WORKER_TASK_EVENTS", default=True)
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"  # dispatch/keys.py DEFAULT_QUEUE
# Routes: every embedding task names its model queue at call time (dispatch/keys.py); BYOK
# provider calls go to the provider queue, drained by an I/O-bound threads worker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-routes
CELERY_TASK_ROUTES = {PROVIDER_EMBED_TASK: {"queue": PROVIDER_QUEUE}}

# Periodic work, run by `celery -A embedplatform beat` (make run starts it; compose has a beat service).
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
def beat_schedule(*, usage_flush_seconds: float, job_sweep_seconds: float, cache_retention_days: int) -> dict:
    """CELERY_BEAT_SCHEDULE from the settings that time it (settings/base.py defines them, once).
    Cache retention runs once a day at a quiet hour (UTC), only where CACHE_RETENTION_DAYS is set."""
    schedule = {
        "usage-flush": {"task": "workers.usage_flush", "schedule": usage_flush_seconds},
        "job-sweep": {"task": "workers.job_sweep", "schedule": job_sweep_seconds},
    }
    if cache_retention_days > 0:
        schedule["cache-prune"] = {"task": "workers.cache_prune", "schedule": crontab(hour=3, minute=17)}
    return schedule
