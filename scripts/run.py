"""Starts the platform's processes: `python scripts/run.py [all|services|web|worker|provider-worker|beat|flower]`.

all      embedded services (where no URL is set), migrate, web, one worker, the provider
         worker, beat, Flower; Ctrl-C stops everything it started.
services the embedded PostgreSQL and Redis under VAR_DIR, in the foreground.
web      migrate (unless --no-migrate), then the API under granian in the foreground.
worker   one embedding worker for every served model (DEVICE=cuda:1 pins it to GPU 1).
provider-worker  the BYOK provider worker: queues `providers` and `default`, threads (I/O).
beat     celery beat: the periodic usage flush and job sweep.
flower   Flower in the foreground.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedplatform import embedded  # noqa: E402
from workers.devices import pin_env  # noqa: E402
from workers.queues import DEFAULT_QUEUE, PROVIDER_QUEUE  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VAR_DIR", str(ROOT / "var"))
    env.setdefault("DJANGO_SETTINGS_MODULE", "embedplatform.settings.base")
    env["VAR_DIR"] = str(Path(env["VAR_DIR"]).resolve())
    return env


def _var_dir(env) -> Path:
    return embedded.ensure_var_dir(Path(env["VAR_DIR"]))


class Services:
    """The embedded pair, started only where no URL is set; stopped by stop()."""

    def __init__(self, env: dict[str, str]):
        self.pg = self.redis = None
        var_dir = _var_dir(env)
        if "DATABASE_URL" not in env:
            self.pg = embedded.start_postgres(var_dir)
            print(f"PostgreSQL (embedded, pgvector): {embedded.pg_dir(var_dir)}", flush=True)
        if "REDIS_URL" not in env:
            self.redis = embedded.start_redis(var_dir)
            print(f"Redis (embedded): {embedded.redis_socket(var_dir)}", flush=True)

    def stop(self) -> None:
        if self.redis is not None:
            embedded.stop_redis(self.redis)
            self.redis = None
        if self.pg is not None:
            embedded.stop_postgres(self.pg)
            self.pg = None


def web_env(env) -> dict[str, str]:
    """The web's environment: granian runs several processes, so /metrics sums them through
    prometheus_client's multiprocess files in a directory emptied at each start (unless the
    operator set PROMETHEUS_MULTIPROC_DIR)."""
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        return env
    directory = _var_dir(env) / "prometheus-web"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return {**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def cmd_web(env) -> list[str]:
    """Granian (a Rust HTTP server) calling Django's WSGI app on a few Python threads per process.

    Requests beyond the threads wait in Granian, not in Python: fewer threads contend for the GIL
    and a cache hit costs less CPU (docs/DECISIONS.md #8, docs/BENCHMARKS.md).
    """
    port = env.get("PORT", "8000")
    return [
        str(BIN / "granian"), "--interface", "wsgi", "embedplatform.wsgi:application",
        "--host", env.get("HOST", "127.0.0.1"), "--port", port,
        "--workers", env.get("WEB_WORKERS", "2"),
        "--blocking-threads", env.get("WEB_THREADS", "16"),
        "--respawn-failed-workers", "--workers-kill-timeout", "10",
        # LOG_FORMAT=json: Django logs one JSON access line per request (embedplatform/logs.py).
        "--access-log" if env.get("LOG_FORMAT") == "text" else "--no-access-log",
    ]


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port.

    Checked before the web starts: granian binds with SO_REUSEPORT, so a second web on a taken
    port would start without an error and the kernel would split connections between the two
    (a stale server from another run, with another SECRET_KEY, then answers some requests 401)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def ports_check(env, names: tuple[str, ...]) -> None:
    """Exits with a message naming the setting to change when a port the processes need is taken."""
    defaults = {"PORT": "8000", "FLOWER_PORT": "5555"}
    host = env.get("HOST", "127.0.0.1")
    for name in names:
        value = env.get(name, defaults[name])
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise SystemExit(f"{name}={value!r} is not a port number (1-65535)")
        port = int(value)
        if port_taken(host if name == "PORT" else "127.0.0.1", port):
            raise SystemExit(f"port {port} is in use (another `make run`, or another server): stop it, "
                             f"or set {name}=<another port>")


def cmd_worker(env, device: str) -> tuple[list[str], dict[str, str]]:
    pinned = {**env, **pin_env(device)}
    if device == "cpu":
        # torch's OpenMP threads sleep between parallel regions instead of spinning: the worker
        # shares its cores with the web, and spinning took their CPU (DECISIONS #21).
        pinned.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    queues = ",".join(_model_queues(pinned))
    name = f"embed-{device.replace(':', '')}@%h"
    return [str(BIN / "celery"), "-A", "embedplatform", "worker", "-P", "solo", "-Q", queues, "-n", name,
            "--loglevel", env.get("LOG_LEVEL", "INFO")], pinned


def _model_queues(env) -> list[str]:
    out = subprocess.run(
        [PY, "-c", "import django; django.setup(); from embeddings.registry import model_specs; "
                   "print(','.join(s.queue for s in model_specs().values()))"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )
    wanted = [q for q in env.get("WORKER_MODELS", "").split(",") if q]
    queues = out.stdout.strip().split(",")
    return [q for q in queues if not wanted or q.removeprefix("embed.") in wanted]


def cmd_provider_worker(env) -> list[str]:
    # Threads, not processes: each task mostly waits on an upstream HTTP call.
    return [str(BIN / "celery"), "-A", "embedplatform", "worker", "-P", "threads",
            # It also runs the small periodic tasks (usage flush, job sweep, webhooks) on `default`.
            "-c", env.get("PROVIDER_CONCURRENCY", "16"), "-Q", f"{PROVIDER_QUEUE},{DEFAULT_QUEUE}", "-n", "providers@%h",
            "--loglevel", env.get("LOG_LEVEL", "INFO")]


def _metrics_port_next(env) -> dict[str, str]:
    """A second worker on this host serves its metrics on the next port (WORKER_METRICS_PORT + 1)."""
    port = int(env.get("WORKER_METRICS_PORT", "9808") or 0)
    return {**env, "WORKER_METRICS_PORT": str(port + 1 if port else 0)}


def cmd_beat(env) -> list[str]:
    """celery beat: the periodic usage flush and job sweep (one beat per deployment)."""
    var = _var_dir(env)
    return [str(BIN / "celery"), "-A", "embedplatform", "beat", "-s", str(var / "celerybeat-schedule"),
            "--pidfile=", "--loglevel", env.get("LOG_LEVEL", "INFO")]


def cmd_flower(env) -> list[str]:
    return [str(BIN / "celery"), "-A", "embedplatform", "flower", f"--port={env.get('FLOWER_PORT', '5555')}",
            "--address=127.0.0.1"]


def migrate(env) -> None:
    subprocess.run([PY, "manage.py", "migrate", "--noinput"], env=env, cwd=ROOT, check=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _on_stop_signals() -> None:
    """Ctrl-C and SIGTERM both stop everything (set explicitly: a shell that starts us in the
    background makes SIGINT ignored, which Python would inherit)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _wait_forever(stop) -> None:
    try:
        _on_stop_signals()
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def run_all(env, device: str) -> int:
    ports_check(env, ("PORT", "FLOWER_PORT"))
    _on_stop_signals()
    services = Services(env)
    procs: list[tuple[str, subprocess.Popen]] = []

    def stop_all() -> None:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        services.stop()

    try:
        migrate(env)
        worker_cmd, worker_env = cmd_worker(env, device)
        for name, cmd, penv in (("web", cmd_web(env), web_env(env)), ("worker", worker_cmd, worker_env),
                                ("provider-worker", cmd_provider_worker(env), _metrics_port_next(env)),
                                ("beat", cmd_beat(env), env), ("flower", cmd_flower(env), env)):
            procs.append((name, subprocess.Popen(cmd, env=penv, cwd=ROOT, start_new_session=True)))
    except BaseException:
        stop_all()
        raise
    port, fport = env.get("PORT", "8000"), env.get("FLOWER_PORT", "5555")
    mport = int(env.get("WORKER_METRICS_PORT", "9808") or 0)
    print(
        f"\n  API     http://127.0.0.1:{port}/v1/  (ready: http://127.0.0.1:{port}/health/ready)\n"
        f"  Admin   http://127.0.0.1:{port}/admin/\n"
        f"  Metrics http://127.0.0.1:{port}/metrics  (worker :{mport}/metrics, provider worker :{mport + 1}/metrics)\n"
        f"  Flower  http://127.0.0.1:{fport}/\n\n"
        f"  First API key:  .venv/bin/python manage.py create_tenant you@example.com --tier paid\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    code = 0
    try:
        _on_stop_signals()
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode}; stopping the rest", flush=True)
                    code = p.returncode or 1
                    raise KeyboardInterrupt
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["all", "services", "web", "worker", "provider-worker", "beat", "flower"])
    parser.add_argument("--device", default=os.environ.get("DEVICE") or os.environ.get("EMBED_DEVICE") or "cpu")
    parser.add_argument("--no-migrate", action="store_true", help="web: skip migrate (a separate step ran it)")
    args = parser.parse_args()
    env = _env()
    os.chdir(ROOT)
    if args.what == "all":
        return run_all(env, args.device)
    if args.what == "services":
        if "DATABASE_URL" in env and "REDIS_URL" in env:
            print("DATABASE_URL and REDIS_URL are set: nothing to start.")
            return 0
        services = Services(env)
        print("Embedded services up; Ctrl-C stops them.", flush=True)
        _wait_forever(services.stop)
        return 0
    if args.what == "web":
        ports_check(env, ("PORT",))
        if not args.no_migrate:
            migrate(env)
        cmd, penv = cmd_web(env), web_env(env)
    elif args.what == "worker":
        cmd, penv = cmd_worker(env, args.device)
    elif args.what == "beat":
        cmd, penv = cmd_beat(env), env
    elif args.what == "provider-worker":
        cmd, penv = cmd_provider_worker(env), env
    else:
        ports_check(env, ("FLOWER_PORT",))
        cmd, penv = cmd_flower(env), env
    os.execve(cmd[0], cmd, penv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
