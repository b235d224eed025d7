"""Every queue, list and key name of the hand-off in one place.

One queue per model, so that every worker (GPU or machine) serving a model drains the
same queue, and operators can add consumers for one model without touching code.

Interactive work does not travel as Celery messages (a message per text caps batches at
a few texts, see docs/DECISIONS.md): it goes through a plain Redis list per model,
`embed:q:<model>:hi`, that the worker drains in bulk; job chunks wait in Postgres and are
claimed by the same loop (a Redis list per model only signals them). The Celery queue
`embed.<model>` carries the worker itself (Flower, inspect, control); the small periodic and
webhook tasks go to DEFAULT_QUEUE, provider calls to PROVIDER_QUEUE.

Celery tasks are sent by name (the names below) from the layers beneath the workers, so that
no module below workers/ imports a task (see dispatch/__init__.py).
"""

from __future__ import annotations

PROVIDER_QUEUE = "providers"
# Small periodic and I/O tasks (usage flush, job sweep, webhooks); the provider worker consumes it.
DEFAULT_QUEUE = "default"

# Celery task names (workers/tasks.py defines the tasks; lower layers send them by name).
PROVIDER_EMBED_TASK = "workers.provider_embed"
JOB_WEBHOOK_TASK = "workers.job_webhook"


def model_queue(model: str) -> str:
    """The Celery queue of a model's workers."""
    return f"embed.{model}"


def work_list(model: str, priority: str = "hi") -> str:
    """The Redis list the drain loop pops texts from (hi before lo)."""
    return f"embed:q:{model}:{priority}"


def heartbeat_key(model: str, worker: str) -> str:
    return f"embed:hb:{model}:{worker}"


def heartbeat_pattern(model: str) -> str:
    return f"embed:hb:{model}:*"


def model_workers_key(model: str) -> str:
    """A hash of the drain loops serving `model`: loop name -> JSON of what it runs (backend,
    precision, device) and until when its last beat holds (unix time). Refreshed in each heartbeat's
    round trip with the heartbeat's TTL, so it goes when the last loop does; GET /v1/models/{id}
    reads it and skips the entries past their time (a loop that died without clearing its own)."""
    return f"embed:workers:{model}"


def reply_key(request_id: str) -> str:
    return f"embed:r:{request_id}"


def alive_key(model: str) -> str:
    """Set with a short TTL by every worker serving `model`: one EXISTS tells the API."""
    return f"embed:alive:{model}"


def stats_key(worker: str) -> str:
    """A hash of counters per worker: batches, items (requests) and texts drained."""
    return f"embed:stats:{worker}"


def job_signal_key(model: str) -> str:
    """A Redis list poked when job chunks for `model` are queued. A signal only: the chunks
    themselves wait in Postgres, and idle workers poll Postgres anyway, so a lost signal
    (broker flushed or restarted) delays a job by at most a poll interval."""
    return f"embed:jobs:{model}"


def provider_alive_key() -> str:
    """Set with a short TTL by every worker consuming the provider queue (workers/bootsteps.py)."""
    return "embed:providers-alive"


def owner_key(token: str) -> str:
    """Set with a short TTL by each running drain loop, under the token its claims carry (job
    chunk leases, taken work items). When the key is gone the loop is gone: its work is taken over
    at once instead of after a lease period (embeddings/jobs.job_orphans_requeue,
    dispatch/local.work_wait)."""
    return f"embed:owner:{token}"


def taken_key(item_id: str) -> str:
    """The token of the drain loop that took a work item off its list (lives as long as a reply)."""
    return f"embed:taken:{item_id}"


def calibration_key(model: str, version: str) -> str:
    """The raw float32 vectors of a model's calibration texts (workers/calibration.py), from which
    the web takes int8/uint8 ranges (embeddings/quantize.py). No TTL: a version's vectors do not change."""
    return f"embed:calib:{model}:{version}"
