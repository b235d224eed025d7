"""docker-compose.yml and the Dockerfile, checked without a Docker daemon.

The structural checks (PyYAML) always run. Where a Compose binary is installed (`docker
compose` v2 or Debian's `docker-compose` v1.29), it also validates and interpolates the file
(`config` needs no daemon). Nothing here builds an image or starts a container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workers.queues import PROVIDER_QUEUE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"postgres", "redis", "migrate", "web", "worker-gpu0", "worker-gpu1", "provider-worker", "beat", "flower"}
APP_SERVICES = SERVICES - {"postgres", "redis"}
SECRETS_ENV = {"SECRET_KEY": "compose-test-secret", "ENCRYPTION_KEY": "compose-test-fernet"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


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
    assert "migrate" in _command(services["migrate"])
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_web_runs_the_server_through_run_py_without_migrating(services):
    web = services["web"]
    assert "scripts/run.py web --no-migrate" in _command(web)
    assert web["environment"]["HOST"] == "0.0.0.0"
    assert "/health/live" in " ".join(web["healthcheck"]["test"])


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
        assert "scripts/run.py worker" in _command(worker)
        assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
        assert worker["image"] != services["web"]["image"]  # the CUDA image
    assert sorted(reserved) == [("0",), ("1",)]


def test_provider_worker_beat_and_flower(services):
    provider = _command(services["provider-worker"])
    assert f"-Q {PROVIDER_QUEUE}" in provider and "-P threads" in provider and "-c 16" in provider
    assert "inspect ping" in " ".join(services["provider-worker"]["healthcheck"]["test"])
    assert "celery -A embedplatform beat" in _command(services["beat"])
    assert "celery -A embedplatform flower" in _command(services["flower"])


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
        pytest.skip("no `docker compose` or `docker-compose` here; the PyYAML checks above ran instead")
    done = _config(binary, SECRETS_ENV)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) >= SERVICES
    assert resolved["services"]["web"]["environment"]["SECRET_KEY"] == "compose-test-secret"
    missing = _config(binary, {})
    assert missing.returncode != 0
    assert "SECRET_KEY" in missing.stderr or "ENCRYPTION_KEY" in missing.stderr
