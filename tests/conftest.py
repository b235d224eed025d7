"""Shared fixtures: a tenancy world (alice and bob on paid, charlie on free), API clients,
the tests' own Redis DB, an in-process drain loop on the real model, and a live stack
(granian + a Celery worker subprocess) for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis as redis_lib
from django.conf import settings
from django.db import connection, connections
from rest_framework.test import APIClient

from accounts.models import ApiKey, Tenant
from accounts.seeds import SEED_TIERS
from embedplatform import embedded
from tests.factories import ApiKeyFactory, TierFactory, UserFactory
from tests.helpers import poll_until

ROOT = Path(__file__).resolve().parent.parent
LIVE_REDIS_DB = settings.TEST_REDIS_DB + 1


@pytest.hookimpl(trylast=True)  # after pytest-django's own ordering (plain, then db, then transactional tests)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Live tests (`@pytest.mark.live`: real servers and workers) run last, in their order, and of
    them those on the session's live stack (`live_stack`) come last of all. Its worker claims any
    job in the test database once it has started, so an in-process test that runs after it could
    find its job chunks taken; and a live test that starts workers of its own, kills them or
    flushes their Redis DB would share that DB and those jobs with it: none runs beside it."""
    live = [item for item in items if item.get_closest_marker("live") is not None]
    if live:
        on_stack = [item for item in live if "live_stack" in getattr(item, "fixturenames", ())]
        items[:] = ([item for item in items if item.get_closest_marker("live") is None]
                    + [item for item in live if item not in on_stack] + on_stack)


@dataclass
class World:
    tenant: Tenant
    key: str
    api_key: ApiKey


@pytest.fixture
def tiers(db):
    return {name: TierFactory(name=name) for name in SEED_TIERS}


def _world(email: str, tier: str) -> World:
    user = UserFactory(email=email, tenant__tier__name=tier)
    api_key = ApiKeyFactory(tenant=user.tenant, created_by=user)
    return World(tenant=user.tenant, key=api_key.clear, api_key=api_key)


@pytest.fixture
def alice(tiers) -> World:
    return _world("alice@example.com", "paid")


@pytest.fixture
def bob(tiers) -> World:
    return _world("bob@example.com", "paid")


@pytest.fixture
def charlie(tiers) -> World:
    return _world("charlie@example.com", "free")


@pytest.fixture
def client_for():
    def make(world: World | None = None, key: str | None = None) -> APIClient:
        client = APIClient()
        token = key or (world.key if world else None)
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


def _redis_url_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        return url.split("?", 1)[0] + f"?db={db}"
    base = url.split("?", 1)[0].rstrip("/")
    parts = base.split("/")
    if len(parts) > 3 and parts[-1].isdigit():
        parts = parts[:-1]
    return "/".join(parts) + f"/{db}"


@pytest.fixture(scope="session", autouse=True)
def _fresh_test_redis():
    """Counters from an earlier run (quotas, rate windows) would leak into this one: start empty."""
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    assert client.connection_pool.connection_kwargs.get("db") == settings.TEST_REDIS_DB
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    """The web's in-process caches (API keys, hot vectors) would outlive each test's rolled-back
    database: every test starts with them empty."""
    from accounts.authcache import cache_clear
    from embeddings import cachecap
    from embeddings.hotcache import hot_cache_reset

    cache_clear()
    hot_cache_reset()
    cachecap._memo.clear()
    yield
    cache_clear()
    hot_cache_reset()
    cachecap._memo.clear()


@pytest.fixture
def jwt_for():
    """A client authenticated as the world's user with a JWT access token (as after login)."""
    from rest_framework_simplejwt.tokens import AccessToken

    def make(world: World) -> APIClient:
        user = world.tenant.users.first()
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
        return client

    return make


@pytest.fixture
def redis_db():
    """The tests' own Redis DB (TEST_REDIS_DB), emptied before each test."""
    from embedplatform.redisconn import redis_client

    client = redis_client()
    db = client.connection_pool.connection_kwargs.get("db")
    assert db == settings.TEST_REDIS_DB, f"refusing to flush Redis DB {db}: not the tests' DB"
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def minilm():
    from embeddings.registry import DEFAULT_MODEL, model_get
    from workers.runtime import ModelRuntime

    return ModelRuntime(model_get(DEFAULT_MODEL), "cpu")


@pytest.fixture
def drainer(transactional_db, redis_db, minilm):
    """A real drain loop on the real model, in a thread of this process."""
    from embeddings.cache import cache_upsert
    from workers.drain import Drainer
    from workers.jobfeed import JobFeed

    loop = Drainer(runtimes={minilm.spec.name: minilm}, redis=redis_db, max_texts=64, max_tokens=16384,
                   upsert=cache_upsert, name="test-drainer", block=0.1,
                   jobs=JobFeed(lease_seconds=30, poll_seconds=0.2))
    loop.heartbeat(force=True)
    thread = loop.start(on_exit=connections.close_all)
    yield loop
    loop.stop()
    thread.join(timeout=10)


# --- live stack: the real web server + a real Celery worker, as subprocesses ---------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    d = connection.settings_dict
    host = d.get("HOST") or (d.get("OPTIONS") or {}).get("host", "")  # a socket dir arrives in OPTIONS
    user = d.get("USER") or "postgres"
    if host.startswith("/"):
        return f"postgresql://{user}@/{d['NAME']}?host={quote(host, safe='')}"
    port = d.get("PORT") or 5432
    return f"postgresql://{user}@{host}:{port}/{d['NAME']}"


@dataclass
class LiveStack:
    url: str
    redis: redis_lib.Redis
    env: dict
    worker_name: str


def live_env(redis_url: str, var_dir: str) -> dict:
    """The environment of a live subprocess (web or worker) on the tests' database."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "embedplatform.settings.base",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": embedded.celery_broker_for(redis_url),
        "SECRET_KEY": settings.SECRET_KEY,  # same key: hashes of keys made by the tests match
        "VAR_DIR": var_dir,
        "EMBED_ONNX_DIR": str(settings.EMBED_ONNX_DIR),  # one export of each model for the whole run
        "DEBUG": "0",
        "CONN_MAX_AGE": "0",
        "SYNC_WAIT_SECONDS": "20",
    }


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker):
    redis_url = _redis_url_db(settings.REDIS_URL, LIVE_REDIS_DB)
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    var_dir = tempfile.mkdtemp(prefix="ep-live-")
    env = live_env(redis_url, var_dir)
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    logs = Path(var_dir)
    worker = subprocess.Popen(
        [str(bin_dir / "celery"), "-A", "embedplatform", "worker", "-P", "solo", "-Q", "embed.all-MiniLM-L6-v2",
         "-n", "live@%h", "--loglevel", "INFO"],
        env=env, cwd=ROOT, stdout=(logs / "worker.log").open("wb")
    )
    web = subprocess.Popen(  # the production command (granian), one process; its own group (_stop)
        [sys.executable, "scripts/run.py", "web", "--no-migrate"],
        env={**env, "PORT": str(port), "WEB_WORKERS": "1", "WEB_THREADS": "40"}, cwd=ROOT,
        stdout=(logs / "web.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []

    def ready_or_exited() -> bool:
        if worker.poll() is not None or web.poll() is not None:
            return True  # no use waiting: the check below fails with the logs
        with contextlib.suppress(httpx.HTTPError):
            answers[:] = [httpx.get(f"{url}/health/ready", timeout=2)]
        return bool(answers) and answers[0].status_code == 200

    with contextlib.suppress(AssertionError):  # timed out: the check below fails with the logs
        poll_until(ready_or_exited, timeout=90, interval=0.5)
    ready = answers[0] if answers else None
    if ready is None or ready.status_code != 200:
        _stop(worker, timeout=1)
        _stop(web, timeout=1, group=True)
        pytest.fail(
            f"live stack did not become ready: {ready and ready.text}\n"
            f"worker log:\n{(logs / 'worker.log').read_text()[-3000:]}\nweb log:\n{(logs / 'web.log').read_text()[-3000:]}"
        )
    names = ready.json()["workers"]["all-MiniLM-L6-v2"]
    yield LiveStack(url=url, redis=client, env=env, worker_name=names[0])
    _stop(web, group=True)
    _stop(worker)
    client.flushdb()


def _stop(proc: subprocess.Popen, timeout: float = 15, group: bool = False) -> None:
    """SIGTERM, SIGKILL after `timeout`; then, with `group` (a process started in a session of its
    own: the web), SIGKILL to what is left of its process group: killing granian's parent alone
    leaves its worker process listening."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def worker_procs():
    """Starts embedding worker subprocesses (real Celery workers, -P solo) on the live Redis DB;
    kills whatever is left at the end. Returns start(name, **env) -> Popen."""
    redis_url = _redis_url_db(settings.REDIS_URL, LIVE_REDIS_DB)
    var_dir = tempfile.mkdtemp(prefix="ep-workers-")
    procs: list[subprocess.Popen] = []

    def start(name: str, **extra: str) -> subprocess.Popen:
        env = {**live_env(redis_url, var_dir), "WORKER_METRICS_PORT": "0", **extra}
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "embedplatform", "worker", "-P", "solo",
             "-Q", "embed.all-MiniLM-L6-v2", "-n", f"{name}@%h", "--loglevel", "INFO"],
            env=env, cwd=ROOT, stdout=(Path(var_dir) / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
        )
        proc.log_path = Path(var_dir) / f"{name}.log"
        procs.append(proc)
        return proc

    start.redis = redis_lib.Redis.from_url(redis_url)
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
