"""Flower sees the embedding work (issue 20 part 1): Flower itself, started as `make flower` starts it
(scripts/run.py flower), on the live stack's broker, with the live web and worker. Requests and a
job through the API show up in Flower's task list (/api/tasks), its worker counters (/api/workers)
and its Prometheus metrics (/metrics) as tasks of the model."""

from __future__ import annotations

import ast
import contextlib
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, _free_port, _stop
from tests.helpers import poll_until

MODEL = "all-MiniLM-L6-v2"
AUTH = ("ops", "flower-test")
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def flower(live_stack, tmp_path):
    port = _free_port()
    log = tmp_path / "flower.log"
    proc = subprocess.Popen(
        [sys.executable, "scripts/run.py", "flower"],
        env={**live_stack.env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": ":".join(AUTH)}, cwd=ROOT,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    worker = live_stack.worker_name.rsplit("-", 1)[0]  # the loop's name is the node name and a process id

    def hears_the_worker() -> bool:  # its heartbeats reach Flower: so will the task events
        try:
            return f'flower_worker_online{{worker="{worker}"}} 1.0' in httpx.get(f"{url}/metrics", timeout=2).text
        except httpx.HTTPError:
            return proc.poll() is not None  # exited: the next check fails with its log

    poll_until(hears_the_worker, timeout=60, interval=0.3, message="Flower to hear the worker", logs=[Path(log)])
    assert proc.poll() is None, log.read_text()[-3000:]
    yield url, worker, log
    _stop(proc, group=True)


def _tasks(url: str, name: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/tasks", params={"taskname": name}, auth=AUTH, timeout=5)
    answer.raise_for_status()
    return [t for t in answer.json().values() if t["name"] == name and t["state"] == "SUCCESS"]


def test_flower_shows_requests_and_job_passes_as_tasks_of_the_model(live_stack, alice, flower):
    """GIVEN Flower listening WHEN a request of 3 new texts and a job of 40 are served THEN Flower's
    task list has succeeded `embed.<model>` tasks adding up to 3 texts of alice's (1 tenant) and
    `embed.<model>.job` tasks adding up to 40; the worker's counters and /metrics count them."""
    url, worker, log = flower
    tag = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {alice.key}"}
    answer = httpx.post(f"{live_stack.url}/v1/embeddings", headers=headers, timeout=30,
                        json={"model": MODEL, "input": [f"flower {i} {tag}" for i in range(3)]})
    assert answer.status_code == 200, answer.text
    job = httpx.post(f"{live_stack.url}/v1/jobs", headers=headers, timeout=30,
                     json={"model": MODEL, "texts": [f"flower job {i} {tag}" for i in range(40)]})
    assert job.status_code == 202, job.text

    def texts_of(name: str, want: int):
        tasks = _tasks(url, name)
        return tasks if sum(ast.literal_eval(t["kwargs"])["texts"] for t in tasks) >= want else None

    synced = poll_until(lambda: texts_of(f"embed.{MODEL}", 3), timeout=30, interval=0.3,
                        message="Flower to list the request's pass", logs=[log])
    assert all(t["worker"] == worker and t["runtime"] > 0 for t in synced)
    assert {ast.literal_eval(t["kwargs"])["tenants"] for t in synced} == {1}
    jobs = poll_until(lambda: texts_of(f"embed.{MODEL}.job", 40), timeout=60, interval=0.5,
                      message="Flower to list the job's passes", logs=[log])
    assert sum(ast.literal_eval(t["kwargs"])["texts"] for t in jobs) == 40
    assert all(ast.literal_eval(t["kwargs"])["jobs"] == 1 for t in jobs)

    workers = httpx.get(f"{url}/workers", params={"json": 1}, auth=AUTH, timeout=5).json()["data"]
    [row] = [w for w in workers if w["hostname"] == worker]
    assert row["task-succeeded"] >= len(synced) + len(jobs)  # the workers page's Succeeded column
    # Its broker page lists the Celery queues the workers consume; the work lists are not among them.
    # Flower learns a worker's queues from its periodic inspection: wait for it, then look.
    def queues_known():
        found = httpx.get(f"{url}/api/queues/length", auth=AUTH, timeout=5).json()["active_queues"]
        return found if f"embed.{MODEL}" in {q["name"] for q in found} else None

    with contextlib.suppress(AssertionError):
        poll_until(queues_known, timeout=20, interval=0.5, message="Flower to know the worker's queues")
    queues = httpx.get(f"{url}/api/queues/length", auth=AUTH, timeout=5).json()["active_queues"]
    assert f"embed.{MODEL}" in {q["name"] for q in queues}
    assert not [q for q in queues if q["name"].startswith("embed:q:")]
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    for name in (f"embed.{MODEL}", f"embed.{MODEL}.job"):
        assert f'flower_events_total{{task="{name}",type="task-succeeded",worker="{worker}"}}' in metrics
        assert f'flower_task_runtime_seconds_count{{task="{name}",worker="{worker}"}}' in metrics
