"""docker-compose.yml, checked without Docker (no daemon can run here).

The structural checks (PyYAML) always run. The topology test starts every application service
of the file (migrate, web, one worker, provider-worker, beat, flower) as subprocesses: each its
own `command` with its own `environment`, interpolated from a test `.env`; only what belongs to
the host is overridden (database and Redis URLs to the tests' servers, loopback addresses and
free ports, device cpu, VAR_DIR and metrics directories, short beat periods). It then checks that
the services together do what the deployment is for: a job completes, its webhook arrives,
usage is flushed by beat's periodic task, and chunks left by a dead or hung worker are swept.
Where a Compose binary is installed, it also validates and interpolates the file (`config`
needs no daemon). Nothing here builds an image or starts a container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
import yaml
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from embedplatform import embedded
from tests.conftest import LIVE_REDIS_DB, _database_url, _free_port, _redis_url_db, _stop
from tests.factories import JobFactory
from tests.helpers import poll_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"postgres", "redis", "migrate", "web", "worker-gpu0", "worker-gpu1", "provider-worker", "beat", "flower"}
APP_SERVICES = SERVICES - {"postgres", "redis"}
SECRETS_ENV = {"SECRET_KEY": "compose-test-secret", "ENCRYPTION_KEY": "compose-test-fernet",
               "FLOWER_BASIC_AUTH": "ops:compose-test"}
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def _run_roles() -> set[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return set(run.ROLES)


def test_every_service_is_there(services):
    assert set(services) >= SERVICES


def test_postgres_has_pgvector_and_redis_is_redis(services):
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(services):
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"
            continue
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"


def test_the_app_waits_for_migrations_and_migrations_wait_for_postgres(services):
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_every_app_service_runs_a_role_of_the_one_process_table(services):
    """`python scripts/run.py ROLE` everywhere: commands and queues are defined once, in run.py."""
    roles = _run_roles() | {"migrate"}
    for name in APP_SERVICES:
        command = services[name]["command"]
        assert command[:2] == ["python", "scripts/run.py"], f"{name}: {command}"
        assert command[2] in roles, name
    assert services["web"]["command"][2:] == ["web", "--no-migrate"]  # the migrate service ran it
    assert {services[n]["command"][2] for n in ("worker-gpu0", "worker-gpu1")} == {"worker"}


def test_each_gpu_worker_reserves_its_own_gpu(services):
    reserved = []
    for name in ("worker-gpu0", "worker-gpu1"):
        worker = services[name]
        env = worker["environment"]
        assert env["EMBED_DEVICE"] == "cuda"
        assert env["CUDA_VISIBLE_DEVICES"] == "0"  # the one GPU the container sees (docs/DECISIONS.md)
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        reserved.append(tuple(device["device_ids"]))
        assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
        assert worker["image"] != services["web"]["image"]  # the CUDA image
    assert sorted(reserved) == [("0",), ("1",)]


def test_flower_listens_beyond_loopback_only_with_credentials(services):
    env = services["flower"]["environment"]
    assert env["FLOWER_HOST"] == "0.0.0.0"
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+}", env["FLOWER_BASIC_AUTH"])


def test_secrets_are_required_not_defaulted(compose):
    text = COMPOSE.read_text()
    for name in SECRETS_ENV:
        assert re.search(rf"\${{{name}:\?[^}}]+}}", text), f"{name} must use ${{{name}:?message}}"
    assert "x-env" in compose


def test_the_dockerfile_is_multi_stage_non_root_with_documented_torch_variants():
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "ARG TORCH_INDEX_URL" in text and "cu1" in text  # CPU default, CUDA variant documented
    assert (ROOT / ".dockerignore").exists()
    assert ".env" in (ROOT / ".dockerignore").read_text()


def _compose_binary() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _config(binary: list[str], env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS_ENV}
    return subprocess.run([*binary, "-f", str(COMPOSE), "config"], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_compose_binary_accepts_the_file():
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no `docker compose` or `docker-compose` here; the PyYAML checks and the topology test ran instead")
    done = _config(binary, SECRETS_ENV)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) >= SERVICES
    assert resolved["services"]["web"]["environment"]["SECRET_KEY"] == "compose-test-secret"
    missing = _config(binary, {})
    assert missing.returncode != 0
    assert any(name in missing.stderr for name in SECRETS_ENV)


# --- the topology, run without Docker ------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?}|(?P<plain>\w+))")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}."""

    def one(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["braced"] or match["plain"], match["op"], match["arg"]
        value = variables.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if missing and op in (":-", "-"):
            return arg
        if missing and op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(one, value)


def test_interpolation_reads_like_compose():
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$HOSTNAME", variables) == "x d  d x $HOSTNAME"
    with pytest.raises(KeyError, match="EMPTY: say"):
        interpolate("${EMPTY:?say}", variables)


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _until(predicate, timeout: float, what: str, logs: dict[str, Path]):
    """poll_until, failing with the tails of the services' logs."""
    return poll_until(predicate, timeout=timeout, interval=0.3, message=what, logs=logs.values())


class ComposeRun:
    """The application services of docker-compose.yml as subprocesses (see the module docstring)."""

    def __init__(self, services: dict, tmp: Path, hook_host: str):
        self.services, self.tmp = services, tmp
        self.redis_url = _redis_url_db(settings.REDIS_URL, LIVE_REDIS_DB)
        self.port, self.flower_port = _free_port(), _free_port()
        self.dotenv = {  # what an operator's .env holds
            "SECRET_KEY": settings.SECRET_KEY,  # the tests' key: API keys made here verify there
            "ENCRYPTION_KEY": settings.ENCRYPTION_KEY,
            "FLOWER_BASIC_AUTH": SECRETS_ENV["FLOWER_BASIC_AUTH"],
            "PROVIDER_ALLOWED_HOSTS": hook_host,
            "WEB_WORKERS": "1", "WEB_THREADS": "8",
        }
        self.host = {  # what differs between this machine and the containers
            "DATABASE_URL": _database_url(), "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": embedded.celery_broker_for(self.redis_url),
            "VAR_DIR": str(tmp / "var"), "EMBED_ONNX_DIR": str(settings.EMBED_ONNX_DIR),
            "WORKER_METRICS_PORT": "0", "USAGE_FLUSH_SECONDS": "1", "JOB_SWEEP_SECONDS": "1",
        }
        self.per_service = {
            "web": {"HOST": "127.0.0.1", "PORT": str(self.port), "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus")},
            "worker-gpu0": {"EMBED_DEVICE": "cpu"},
            "flower": {"FLOWER_HOST": "127.0.0.1", "FLOWER_PORT": str(self.flower_port)},
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def env(self, name: str) -> dict[str, str]:
        declared = {k: interpolate(str(v), self.dotenv) for k, v in self.services[name]["environment"].items()}
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        return {**base, **declared, **self.host, **self.per_service.get(name, {})}

    def argv(self, name: str) -> list[str]:
        """The service's command, its program taken from this virtualenv (python, celery, ...)."""
        command = [interpolate(str(part), self.dotenv) for part in self.services[name]["command"]]
        program = sys.executable if command[0] == "python" else str(Path(sys.executable).parent / command[0])
        return [program, *command[1:]]

    def start(self, name: str) -> subprocess.Popen:
        (self.tmp / "prometheus").mkdir(exist_ok=True)
        self.logs[name] = self.tmp / f"{name}.log"
        proc = subprocess.Popen(self.argv(name), env=self.env(name), cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=self.logs[name].open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            _stop(proc, timeout=10, group=True)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@pytest.fixture
def hook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def compose_run(services, tmp_path, hook_server, transactional_db):
    """Torn down before transactional_db empties the tables (fixtures end in reverse order)."""
    stack = ComposeRun(services, tmp_path, hook_server)
    redis = redis_lib.Redis.from_url(stack.redis_url)
    redis.flushdb()
    try:
        yield stack
    finally:
        stack.stop()
        redis.flushdb()


def _job_with_stranded_chunks(alice) -> tuple[str, list[int]]:
    """A job whose two chunks look taken by workers that are gone, committed at once so that no
    live worker claims them first: one held by a drain loop whose heartbeat stopped (a killed
    worker: its lease runs another hour), one by a claim whose lease ran out (a hung worker)."""
    from embeddings.models import JobChunk

    texts = [f"stranded {i} {uuid.uuid4().hex[:8]}" for i in range(2 * settings.JOB_CHUNK_TEXTS)]
    now = timezone.now()
    with transaction.atomic():
        job = JobFactory(tenant=alice.tenant, texts=texts)
        first, second = JobChunk.objects.filter(job=job).order_by("seq")
        JobChunk.objects.filter(pk=first.pk).update(status="running", attempts=1, lease="0123abcd@deadtoken:gone",
                                                    lease_until=now + timedelta(hours=1))
        JobChunk.objects.filter(pk=second.pk).update(status="running", attempts=1, lease=uuid.uuid4().hex,
                                                     lease_until=now - timedelta(seconds=5))
    return str(job.pk), [first.pk, second.pk]


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_the_compose_services_together_serve_a_job_its_webhook_usage_and_the_sweep(compose_run, alice, settings):
    """GIVEN migrate run to its end, then web, worker-gpu0, provider-worker, beat and flower, each
    from its own compose command and environment
    WHEN a job with a webhook is posted, and a job is left with chunks of a dead and a hung worker
    THEN the job succeeds, its webhook arrives, beat's periodic flush writes the usage to Postgres,
    and the stranded chunks are taken back and done."""
    from accounts.models import DailyUsage
    from accounts.signing import SIGNATURE_HEADER, webhook_verify
    from embeddings.models import Job, JobChunk

    settings.JOB_CHUNK_TEXTS = 8
    stack = compose_run
    migrate = stack.start("migrate")
    assert migrate.wait(timeout=120) == 0, stack.log("migrate")
    for name in ("web", "worker-gpu0", "provider-worker", "beat", "flower"):
        stack.start(name)
    url = f"http://127.0.0.1:{stack.port}"

    def ready() -> bool:
        for name, proc in stack.procs.items():
            assert name == "migrate" or proc.poll() is None, f"{name} exited:\n{stack.log(name)[-3000:]}"
        try:
            return httpx.get(f"{url}/health/ready", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    _until(ready, 150, "the web to be ready (db, broker, a worker for the model)", stack.logs)
    assert DailyUsage.objects.filter(tenant=alice.tenant).count() == 0

    texts = [f"compose {i} {uuid.uuid4().hex[:8]}" for i in range(20)]
    hook = f"http://{stack.dotenv['PROVIDER_ALLOWED_HOSTS']}/hook"
    auth = {"Authorization": f"Bearer {alice.key}"}
    posted = httpx.post(f"{url}/v1/jobs", json={"texts": texts, "model": MODEL, "webhook_url": hook},
                        headers=auth, timeout=30)
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]
    stranded_id, stranded_chunks = _job_with_stranded_chunks(alice)

    def status(job: str) -> str:
        return httpx.get(f"{url}/v1/jobs/{job}", headers=auth, timeout=10).json()["status"]

    _until(lambda: status(job_id) == "succeeded", 60, "the job to succeed", stack.logs)
    _until(lambda: _Hook.received, 30, "the webhook", stack.logs)
    headers, body = _Hook.received[0]
    assert json.loads(body)["id"] == job_id and json.loads(body)["status"] == "succeeded"
    signature = {k.lower(): v for k, v in headers.items()}[SIGNATURE_HEADER.lower()]
    assert signature.startswith("t=") and ",v1=" in signature
    assert webhook_verify(alice.tenant.webhook_secret, body, signature)  # timestamped, fresh, over "<t>.<body>"

    def flushed() -> bool:
        rows = DailyUsage.objects.filter(tenant=alice.tenant, model=MODEL)
        return sum(r.cache_hits + r.cache_misses for r in rows) >= len(texts)

    _until(flushed, 30, "beat's usage flush to reach Postgres", stack.logs)

    _until(lambda: Job.objects.get(pk=stranded_id).status == "succeeded", 60, "the stranded job to finish",
           stack.logs)
    for chunk in JobChunk.objects.filter(pk__in=stranded_chunks):
        assert chunk.status == "done" and chunk.attempts >= 2
    provider_log = stack.log("provider-worker")
    assert "workers.usage_flush[" in provider_log and "workers.job_sweep[" in provider_log  # `default` consumed
    assert "workers.job_webhook[" in provider_log

    flower = f"http://127.0.0.1:{stack.flower_port}"
    _until(lambda: _answers(f"{flower}/healthcheck"), 30, "Flower", stack.logs)
    assert httpx.get(f"{flower}/", timeout=5).status_code == 401  # credentials asked
    user, _, password = SECRETS_ENV["FLOWER_BASIC_AUTH"].partition(":")
    assert httpx.get(f"{flower}/", auth=(user, password), timeout=5).status_code == 200


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
