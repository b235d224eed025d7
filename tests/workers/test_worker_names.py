"""Two embedding workers on one host keep apart (issue 18 part 4): each drain loop's name carries its
process id, so two workers of one Celery node name (two `make worker` on one host and device, both
`embed-cpu@<host>`) keep their own heartbeat keys and entries in the model's workers hash. Both are
listed by GET /v1/models/{id}, and stopping one leaves the other listed and serving. WORKER_NAME
names the Celery node."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from dispatch.keys import heartbeat_pattern
from embeddings.registry import DEFAULT_MODEL
from tests.conftest import ROOT, _stop, live_env
from tests.helpers import poll_until
from tests.test_run_script import _run_module

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _listed(client) -> list[str]:
    response = client.get(f"/v1/models/{DEFAULT_MODEL}")
    assert response.status_code == 200, response.content
    return [w["id"] for w in response.json()["workers"]]


def test_two_workers_of_one_node_name_are_both_listed_and_one_stopping_leaves_the_other(
        alice, client_for, redis_db):
    var_dir = Path(tempfile.mkdtemp(prefix="ep-names-"))
    # The tests' own Redis DB, which this process's API reads; one drain loop each, as `make worker` starts it.
    env = {**live_env(settings.REDIS_URL, str(var_dir)), "WORKER_METRICS_PORT": "0", "EMBED_DRAIN_THREADS": "1"}
    env.pop("WORKER_NAME", None)
    procs = [subprocess.Popen([sys.executable, "scripts/run.py", "worker"], env=env, cwd=ROOT,
                              stdout=(var_dir / f"worker-{i}.log").open("wb"), stderr=subprocess.STDOUT)
             for i in range(2)]
    client = client_for(alice)
    try:
        # run.py execs celery: each Popen's pid is its worker's, whose node name is the default for both.
        want = sorted(f"embed-cpu@{socket.gethostname()}-{p.pid}" for p in procs)

        def both_listed() -> bool:
            assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
            return _listed(client) == want

        try:
            poll_until(both_listed, timeout=180, interval=0.5)
        except AssertionError:
            logs = "\n".join((var_dir / f"worker-{i}.log").read_text()[-2000:] for i in range(2))
            pytest.fail(f"both workers were not listed: {_listed(client)} (want {want})\n{logs}")
        assert len(list(redis_db.scan_iter(match=heartbeat_pattern(DEFAULT_MODEL)))) == 2

        _stop(procs[0])  # a warm shutdown: the loop clears its own heartbeat and entry, not the other's
        remaining = f"embed-cpu@{socket.gethostname()}-{procs[1].pid}"
        assert _listed(client) == [remaining]
        assert [k.decode() for k in redis_db.scan_iter(match=heartbeat_pattern(DEFAULT_MODEL))] == [
            f"embed:hb:{DEFAULT_MODEL}:{remaining}"]
        r = client.post("/v1/embeddings", {"model": DEFAULT_MODEL, "input": ["still served by the other worker"]},
                        format="json")
        assert r.status_code == 200, r.content
    finally:
        for proc in procs:
            _stop(proc)


def test_worker_name_sets_the_celery_node_name(tmp_path):
    run = _run_module()
    env = {**os.environ, "VAR_DIR": str(tmp_path), "EMBED_MODELS": ""}  # the default model
    env.pop("WORKER_NAME", None)
    env.pop("WORKER_MODELS", None)

    def node(device: str = "cpu", **extra: str) -> str:
        argv, _ = run.cmd_worker({**env, **extra}, device)
        return argv[argv.index("-n") + 1]

    assert node() == "embed-cpu@%h" and node("cuda:1") == "embed-cuda1@%h"  # the defaults, as before
    assert node(WORKER_NAME="embed-a") == "embed-a@%h"
    assert node(WORKER_NAME="embed-a@box-7") == "embed-a@box-7"
    assert node(WORKER_NAME=" ") == "embed-cpu@%h"
