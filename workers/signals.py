"""Celery signal handlers: the request id across the broker, and the worker's metrics port.

Connected by importing this module (embedplatform/celery.py does). Celery's signals:
https://docs.celeryq.dev/en/stable/userguide/signals.html
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_ready
from django.conf import settings

from embedplatform import logs, metrics

logger = logging.getLogger(__name__)

REQUEST_ID_TASK_HEADER = "request_id"


@before_task_publish.connect(dispatch_uid="workers.signals.request_id_publish")
def request_id_publish(headers: dict | None = None, **kwargs: Any) -> None:
    """before_task_publish: a task sent while handling a request carries that request's id.

    https://docs.celeryq.dev/en/stable/userguide/signals.html#before-task-publish
    An id the caller set explicitly (apply_async(headers=...)) is kept.
    """
    rid = logs.request_id_get()
    if rid and headers is not None:
        headers.setdefault(REQUEST_ID_TASK_HEADER, rid)


@task_prerun.connect(dispatch_uid="workers.signals.request_id_enter")
def request_id_enter(task: Task | None = None, **kwargs: Any) -> None:
    """task_prerun: the task's log lines carry the id of the request that sent it (or none).

    https://docs.celeryq.dev/en/stable/userguide/signals.html#task-prerun
    """
    rid = None
    if task is not None:
        rid = logs.request_id_clean(getattr(task.request, REQUEST_ID_TASK_HEADER, None))
    logs.request_id_set(rid)


@task_postrun.connect(dispatch_uid="workers.signals.request_id_leave")
def request_id_leave(**kwargs: Any) -> None:
    """task_postrun: the worker thread's next lines belong to no request.

    https://docs.celeryq.dev/en/stable/userguide/signals.html#task-postrun
    """
    logs.request_id_set(None)


@worker_ready.connect(dispatch_uid="workers.signals.metrics_serve")
def metrics_serve(**kwargs: Any) -> None:
    """worker_ready: serve this worker's Prometheus metrics on WORKER_METRICS_PORT (0: off).

    https://docs.celeryq.dev/en/stable/userguide/signals.html#worker-ready
    A port that is taken (two workers on one host with the same port) is logged, not fatal:
    the worker still embeds, only its metrics are not scraped.
    """
    port = int(getattr(settings, "WORKER_METRICS_PORT", 0) or 0)
    if port:
        metrics.worker_metrics_serve(port=port, addr=getattr(settings, "WORKER_METRICS_ADDR", "0.0.0.0"))
