"""Drain-loop passes reach Flower as Celery task events (workers/taskevents.py): a real drain loop
on the real model, the real broker (the tests' Redis DB), a real Celery event receiver feeding
Flower's own EventsState, the state behind its task list, worker counters and /metrics."""

from __future__ import annotations

import ast
import threading
import time
import uuid

import prometheus_client
import pytest
from django.db import connections

from embeddings.cache import cache_upsert, text_key
from embedplatform.celery import app
from tests import handoff
from tests.factories import JobFactory
from tests.helpers import poll_until
from workers.drain import Drainer
from workers.jobfeed import JobFeed
from workers.taskevents import QUEUE_LIMIT, PassEvents, task_events, task_events_on, task_name

MODEL = "all-MiniLM-L6-v2"
HOST = "embed-test@events"


class FlowerState:
    """Flower's EventsState fed by a Celery event receiver on the broker, in a thread, as Flower's
    own Events thread does (flower/events.py)."""

    def __init__(self) -> None:
        from flower.events import EventsState

        self.state = EventsState(max_tasks_in_memory=10_000)
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.connection = app.connection_for_read()
        self.receiver = app.events.Receiver(self.connection, handlers={"*": self.on_event})
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"limit": None, "timeout": None},
                                       daemon=True)
        self.thread.start()

    def on_event(self, event: dict) -> None:
        with self.lock:
            self.seen.append(event)
            self.state.event(event)

    def tasks(self, name: str, state: str = "SUCCESS") -> list:
        with self.lock:
            return [t for _, t in self.state.tasks.items() if t.name == name and t.state == state]

    def close(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.connection.release()


@pytest.fixture
def flower():
    """A receiver that is subscribed: it has seen a probe event (a fanout's events before the
    subscription are lost, as for Flower)."""
    state = FlowerState()
    with app.connection_for_write() as conn:
        probe = app.events.Dispatcher(conn, hostname="probe@test")
        poll_until(lambda: probe.send("worker-heartbeat", active=0) or any(
            e["hostname"] == "probe@test" for e in list(state.seen)), timeout=10, interval=0.1,
            message="the event receiver to subscribe")
        probe.close()
    yield state
    state.close()


@pytest.fixture
def events():
    sender = PassEvents(app, hostname=HOST)
    yield sender
    sender.close()


@pytest.fixture
def loop(transactional_db, redis_db, minilm, events):
    drainer = Drainer(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                      name="events", block=0.1, jobs=JobFeed(lease_seconds=30, poll_seconds=0), events=events)
    drainer.heartbeat(force=True)
    yield drainer
    drainer.close()
    connections.close_all()


def _submit(texts: list[str], tenant: int):
    return handoff.work_submit(model=MODEL, texts=texts, keys=[text_key(t) for t in texts], scope=tenant, wait=30,
                               tenant=tenant)


def _kwargs(task) -> dict:
    return ast.literal_eval(task.kwargs)


def test_each_request_pass_is_a_task_of_the_model_in_flowers_state(loop, flower):
    """GIVEN three requests of two tenants waiting WHEN one pass serves them THEN Flower's state has
    one succeeded task `embed.<model>` on the worker, with the pass's texts, requests, tenants,
    tokens and its runtime; its worker counters and its Prometheus metrics count it."""
    tag = uuid.uuid4().hex[:6]
    _submit([f"a {tag}", f"b {tag}"], tenant=1)
    _submit([f"c {tag}"], tenant=1)
    _submit([f"d {tag}", f"a {tag}"], tenant=2)  # "a" again: embedded once
    assert loop.run_once(block=0.1) == 4

    [task] = poll_until(lambda: flower.tasks(task_name(MODEL)), timeout=10, message="the pass's task-succeeded")
    kwargs = _kwargs(task)
    assert {k: kwargs[k] for k in ("texts", "requests", "tenants")} == {"texts": 4, "requests": 3, "tenants": 2}
    assert kwargs["tokens"] > 4
    assert task.worker.hostname == HOST
    assert 0 < task.runtime < 30
    assert task.received <= task.started <= task.succeeded
    assert ast.literal_eval(task.result)["texts"] == 4

    assert flower.state.counter[HOST]["task-succeeded"] == 1  # the workers page's "Succeeded"
    assert flower.state.counter[HOST]["task-received"] == 1  # its "Processed"
    metrics = prometheus_client.generate_latest().decode()
    assert f'flower_events_total{{task="{task_name(MODEL)}",type="task-succeeded",worker="{HOST}"}}' in metrics
    assert f'flower_task_runtime_seconds_count{{task="{task_name(MODEL)}",worker="{HOST}"}}' in metrics


def test_a_job_pass_is_a_job_task_of_the_model(loop, flower, alice, settings):
    """GIVEN a job of 40 texts in chunks of 16 WHEN the loop runs it THEN Flower's state has
    `embed.<model>.job` tasks whose texts add up to the job's, one job and one tenant each."""
    settings.JOB_CHUNK_TEXTS = 16
    texts = [f"job text {i} {uuid.uuid4().hex[:6]}" for i in range(40)]
    JobFactory(tenant=alice.tenant, texts=texts)

    done = 0
    while done < len(texts):
        done += loop.run_once(block=0.1)
    loop.flush()

    def job_tasks():
        tasks = flower.tasks(task_name(MODEL, job=True))
        return tasks if sum(_kwargs(t)["texts"] for t in tasks) == len(texts) else None

    tasks = poll_until(job_tasks, timeout=10, message="job passes adding up to the job's texts")
    for task in tasks:
        kwargs = _kwargs(task)
        assert (kwargs["jobs"], kwargs["tenants"], kwargs["cached"]) == (1, 1, 0)
        assert kwargs["chunks"] >= 1 and kwargs["tokens"] > kwargs["texts"]
    assert sum(_kwargs(t)["chunks"] for t in tasks) == 3


def test_a_failed_pass_is_a_failed_task(loop, flower, monkeypatch):
    """GIVEN a forward pass that raises WHEN the loop serves it THEN Flower shows a failed task
    naming the error, and the requests retried one by one as a succeeded one."""
    runtime = loop.runtimes[MODEL]
    real = runtime.encode

    def encode(texts, **kwargs):
        if len(texts) > 1:
            raise RuntimeError("out of memory, say")
        return real(texts, **kwargs)

    monkeypatch.setattr(runtime, "encode", encode)
    _submit([f"x {uuid.uuid4().hex}"], tenant=1)
    _submit([f"y {uuid.uuid4().hex}"], tenant=1)
    assert loop.run_once(block=0.1) == 2

    [failed] = poll_until(lambda: flower.tasks(task_name(MODEL), "FAILURE"), timeout=10, message="task-failed")
    assert "RuntimeError: out of memory, say" in failed.exception
    [retried] = poll_until(lambda: flower.tasks(task_name(MODEL)), timeout=10, message="the retried requests")
    assert _kwargs(retried)["requests"] == 2


def test_nothing_is_queued_while_the_worker_sends_no_task_events():
    sender = PassEvents(app, hostname=HOST, enabled=lambda: False)
    try:
        sender.report(task_name(MODEL), started=time.time(), runtime=0.01, texts=1)
        assert sender.queue.qsize() == 0
    finally:
        sender.close()


def test_task_events_follow_the_workers_dispatcher():
    """Celery's own check: a dispatcher of every group, or one with `task` added by enable_events."""

    class Consumer:
        def __init__(self, enabled: bool, groups: set[str]):
            self.event_dispatcher = type("D", (), {"enabled": enabled, "groups": groups})()

    assert task_events_on(Consumer(True, set()))
    assert task_events_on(Consumer(True, {"worker", "task"}))
    assert not task_events_on(Consumer(True, {"worker"}))  # -E off, no enable_events yet
    assert not task_events_on(Consumer(False, set()))
    assert not task_events_on(None)


def test_a_broker_that_is_away_costs_dropped_events_not_a_slow_pass():
    """GIVEN a sender whose broker refuses connections WHEN passes report THEN report() returns at
    once, every time, and the reports are dropped (counted), never queued without end."""
    away = app.__class__("away", broker="redis://127.0.0.1:1/0", set_as_current=False)
    away.conf.broker_connection_retry = False
    away.conf.broker_connection_timeout = 0.5
    away.conf.broker_transport_options = {"socket_connect_timeout": 0.2}
    sender = PassEvents(away, hostname=HOST)
    try:
        began = time.perf_counter()
        for _ in range(QUEUE_LIMIT + 500):
            sender.report(task_name(MODEL), started=time.time(), runtime=0.01, texts=1, requests=1, tenants=1)
        per_report = (time.perf_counter() - began) / (QUEUE_LIMIT + 500)
        assert per_report < 50e-6, f"{per_report * 1e6:.1f} us a report"
        # Dropped, queued ones included (while the broker is away they are dropped at once), none sent.
        poll_until(lambda: sender.dropped == QUEUE_LIMIT + 500, timeout=10, message="every report dropped")
        assert sender.sent == 0
    finally:
        sender.close(timeout=5)


def test_the_events_of_a_pass_are_those_of_a_celery_task():
    events = task_events(("embed.m", 100.0, 100.5, 0.25, {"texts": 3, "requests": 2}, None))
    assert [kind for kind, _ in events] == ["task-received", "task-started", "task-succeeded"]
    ids = {fields["uuid"] for _, fields in events}
    assert len(ids) == 1
    received, started, succeeded = (fields for _, fields in events)
    assert received["name"] == "embed.m" and ast.literal_eval(received["kwargs"]) == {"texts": 3, "requests": 2}
    assert (received["timestamp"], started["timestamp"], succeeded["timestamp"]) == (100.0, 100.25, 100.5)
    assert succeeded["runtime"] == 0.25
    failed = task_events(("embed.m", 100.0, 100.5, 0.25, {"texts": 3}, "RuntimeError: boom"))[-1]
    assert failed == ("task-failed", {"uuid": failed[1]["uuid"], "exception": "RuntimeError: boom", "traceback": "",
                                      "timestamp": 100.5})
