"""Drain-loop passes reported as Celery task events, so Flower sees the embedding work.

Embedding work does not travel as Celery tasks (dispatch/keys.py), so without this Flower's task
list, its worker counters and its Prometheus metrics would show an embedding worker doing
nothing. Each forward pass for requests is reported as one task of the model, `embed.<model>`,
and each job pass as `embed.<model>.job`: task-received, task-started, then task-succeeded (or
task-failed), with a fresh uuid, the worker's node name as hostname, kwargs that say what the
pass held (texts, requests or job chunks, tenants as a count, tokens) and the time in the model
as runtime (seconds), the figure embed_inference_seconds observes on /metrics.

Best effort and off the serving path: a loop only puts a small tuple on a bounded queue
(PassEvents.report, about a microsecond); one thread of the worker builds the events and
publishes what has piled up every half second in one message (a list of events, as Celery's own
buffered task events travel), on a broker connection of its own. A broker that is away costs dropped events,
never a slower or failed pass. Sent only while the worker sends task events (worker_send_task_events,
WORKER_TASK_EVENTS; `celery control enable_events`, which Flower sends every few seconds).
See docs/DECISIONS.md.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery
    from celery.events import EventDispatcher

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000  # passes waiting to be published; beyond this they are dropped (counted)
BATCH_LIMIT = 200  # passes published in one message at most
# Passes are published at most this often, in one message: one publish costs the worker about half a
# millisecond of CPU (kombu, a Redis round trip), one per pass would be a tenth of a core at a few
# hundred passes a second. Flower shows them this much later, with their own timestamps.
FLUSH_SECONDS = 0.5
RETRY_SECONDS = 5.0  # after a failed publish, passes are dropped for this long before reconnecting

# (name, timestamp at the start, at the end, runtime seconds, kwargs, error or None)
Report = tuple[str, float, float, float, dict[str, int], str | None]


def task_name(model: str, *, kind: str = "embed", job: bool = False) -> str:
    """The task name a pass of `model` is reported under: `embed.<model>` (a reranker's
    `rerank.<model>`), a job pass `embed.<model>.job`."""
    return f"{kind}.{model}.job" if job else f"{kind}.{model}"


def task_names(runtimes: dict, *, job: bool = False) -> dict[str, str]:
    """task_name of each model a loop serves, by its runtime's kind (read with getattr: tests drive
    loops with stand-in runtimes)."""
    return {model: task_name(model, kind=getattr(getattr(rt, "spec", None), "kind", "embed"), job=job)
            for model, rt in runtimes.items()}


def task_events_on(consumer: object) -> bool:
    """Whether a Celery worker's consumer sends task events now: its dispatcher exists, is enabled
    and sends the `task` group (the check EventDispatcher.send makes). Follows worker_send_task_events
    (-E) at start and `celery control enable_events` / `disable_events` after."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return False
    return not dispatcher.groups or "task" in dispatcher.groups


def _repr(fields: dict[str, Any]) -> str:
    # Celery sends args, kwargs and result as reprs (argsrepr, kwargsrepr, saferepr(result)).
    return "{" + ", ".join(f"'{k}': {v!r}" for k, v in fields.items()) + "}"


def task_events(report: Report) -> list[tuple[str, dict[str, Any]]]:
    """The (type, fields) of the Celery events of one pass, as a worker sends them for a task:
    received when the pass began, started `runtime` before it ended (the time in the model ends
    the pass, give or take its bookkeeping), succeeded or failed when it ended."""
    name, began, ended, runtime, kwargs, error = report
    task_id = str(uuid.uuid4())
    events: list[tuple[str, dict[str, Any]]] = [
        ("task-received", {"uuid": task_id, "name": name, "args": "()", "kwargs": _repr(kwargs), "retries": 0,
                           "eta": None, "expires": None, "root_id": task_id, "parent_id": None, "timestamp": began}),
        ("task-started", {"uuid": task_id, "timestamp": max(began, ended - runtime)}),
    ]
    if error is None:
        result = {"texts": kwargs.get("texts", 0), "ms": round(runtime * 1000, 3)}
        events.append(("task-succeeded", {"uuid": task_id, "result": _repr(result), "runtime": runtime,
                                          "timestamp": ended}))
    else:
        events.append(("task-failed", {"uuid": task_id, "exception": error, "traceback": "", "timestamp": ended}))
    return events


class PassEvents:
    """Publishes drain-loop passes as Celery task events from a thread of its own.

    `report()` never blocks and never raises: it is called from the drain loops after each pass.
    `enabled()` is asked on each report (a few attribute reads); while it says no, nothing is queued.
    """

    def __init__(self, app: Celery, *, hostname: str, enabled: Callable[[], bool] = lambda: True) -> None:
        self.app = app
        self.hostname = hostname
        self.enabled = enabled
        self.queue: queue.SimpleQueue[Report | None] = queue.SimpleQueue()
        self.sent = 0  # passes published
        self.dropped = 0  # passes dropped: queue full or broker away
        self._dispatcher: EventDispatcher | None = None
        self._retry_at = 0.0
        self._failing = False
        self._closed = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._thread.start()

    def report(self, name: str, *, started: float, runtime: float, error: str | None = None, **counts: int) -> None:
        """Queues one pass: `name` (task_name), its start (time.time()), its runtime in seconds, an
        error for a failed pass, and the counts it held (texts, requests, tenants, tokens, ...)."""
        try:
            if self._closed or not self.enabled():
                return
            if self.queue.qsize() >= QUEUE_LIMIT:
                self.dropped += 1
                return
            self.queue.put_nowait((name, started, time.time(), runtime, counts, error))
        except Exception:  # a pass must not fail for its report
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Publishes what is queued (within `timeout`), then stops the thread and its connection."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self.queue.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            batch: list[Report] = [] if first is None else [first]
            stop = first is None
            # Let the passes of the next half second pile up: put() on a queue nobody waits on wakes
            # no thread, so the loops' reports stay about a microsecond.
            if not stop:
                self._closing.wait(FLUSH_SECONDS)
            while not stop:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            for start in range(0, len(batch), BATCH_LIMIT):
                self._publish(batch[start:start + BATCH_LIMIT])
            if stop:
                self._disconnect()
                return

    def _publish(self, batch: list[Report]) -> None:
        if time.monotonic() < self._retry_at:
            self.dropped += len(batch)
            return
        try:
            dispatcher = self._dispatcher or self._connect()
            for report in batch:
                for kind, fields in task_events(report):
                    dispatcher.send(kind, **fields)  # buffered (buffer_group): one message below
            dispatcher.flush(errors=False)
        except Exception as exc:  # the broker away: drop these, reconnect after a pause
            self.dropped += len(batch)
            self._disconnect()
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if not self._failing:
                logger.warning("task events for Flower not sent (%s: %s); dropping them for %.0f s at a time "
                               "until the broker answers", exc.__class__.__name__, exc, RETRY_SECONDS)
            self._failing = True
            return
        self.sent += len(batch)
        if self._failing:
            logger.info("task events for Flower sent again")
        self._failing = False

    def _connect(self) -> EventDispatcher:
        connection = self.app.connection_for_write()
        # buffer_while_offline=False: a failed publish raises (and the batch is dropped) instead of
        # piling up in the dispatcher while the broker is away.
        self._dispatcher = self.app.events.Dispatcher(
            connection, hostname=self.hostname, enabled=True, buffer_while_offline=False,
            buffer_group=["task"], buffer_limit=BATCH_LIMIT * 4,
        )
        return self._dispatcher

    def _disconnect(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            with contextlib.suppress(Exception):
                dispatcher.close()
            with contextlib.suppress(Exception):
                if dispatcher.connection is not None:
                    dispatcher.connection.release()
