"""Scale-out on one model queue: one worker process, two on one host, two "hosts" on loopback.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/embedplatform_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/scale.py [--scale 0.2]

The same web and load as bench/e2e.py (its pieces are imported from there), against three
configurations of embedding workers, all draining the one Redis list of the model:
  one     one `scripts/run.py worker`, the default threads (as `make run`)
  two     two `scripts/run.py worker` on this host, distinct WORKER_NAME, EMBED_THREADS = half
          the cores each, so the two split the cores instead of each taking all of them
  hosts   two workers as two machines would run: each pinned to its own half of the CPUs
          (sched_setaffinity, as `taskset` does; one core each on a 2-core box) with its own
          WORKER_NAME (`embed-cpu@host-a`, `@host-b`); threads left at the default, which
          workers/devices.py cpu_threads reads from the affinity, as on a host of that size
Each configuration runs on its own freshly created database (`<DATABASE_URL's name>_<config>`,
dropped afterwards) and a flushed Redis DB (REDIS_URL's: everything in it goes), so no text of
an earlier configuration is a hit. For each one, like e2e's miss rows:
  miss/1x32 unique single-text requests from 32 concurrent clients (texts/s)
  miss/32x4 unique 32-text requests from 4 concurrent clients (texts/s)
and, around each, how the work split and where the CPU went:
  per worker   texts and forward passes (the `embed_batch_texts` histogram of its own metrics
               port, WORKER_METRICS_PORT = --port + 1, + 2), mean pass size, seconds in
               passes, and the CPU its process used (psutil: user + system, before and after)
  web          CPU of the web's processes (granian and its workers)
  load         CPU of this process (the load generator)
  services     CPU of this database's PostgreSQL backends and of the Redis server (Redis is
               shared with whatever else uses it)
  machine      busy cores of the whole machine (all processes, others' too) over the wall time:
               near the core count, the cores are the limit, not the number of workers
The raw model rows of bench/e2e.py (bench_raw) run first, in the same run, for the ratios.
Results print as Markdown tables and are written to bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.e2e import bench_env, bench_key, bench_raw, request_bodies, run_clients, stack_stop  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
CONFIGS = ("one", "two", "hosts")
SCENARIOS = {  # name: (clients, requests per client at scale 1, texts per request, seed): e2e's miss rows
    "miss_single_c32": (32, 40, 1, 100),
    "miss_batch32_c4": (4, 20, 32, 200),
}


@dataclass
class WorkerSpec:
    """One `scripts/run.py worker`: its node name, metrics port, environment overrides and CPUs."""

    name: str
    metrics_port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    cpus: set[int] | None = None


def plan(config: str, port: int) -> list[WorkerSpec]:
    """The workers of `config`. Two on one host get EMBED_THREADS = half the cores each: left at
    the default, each would size its passes for the whole machine (cpu_threads: half the cores for
    big passes, all of them for small ones) and the two would oversubscribe it. Pinned "hosts"
    keep the default, which cpu_threads reads from the affinity, as a smaller host would."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    half = str(max(1, len(cpus) // 2))
    if config == "one":
        return [WorkerSpec("embed-a", port + 1)]
    if config == "two":
        return [WorkerSpec(f"embed-{x}", port + 1 + i, {"EMBED_THREADS": half}) for i, x in enumerate("ab")]
    if len(cpus) >= 2 and hasattr(os, "sched_setaffinity"):
        mid = len(cpus) // 2
        return [WorkerSpec("embed-cpu@host-a", port + 1, cpus=set(cpus[:mid])),
                WorkerSpec("embed-cpu@host-b", port + 2, cpus=set(cpus[mid:]))]
    # No affinity here (or one CPU): the closest is two unpinned workers that split the threads.
    return [WorkerSpec(f"embed-cpu@host-{x}", port + 1 + i, {"EMBED_THREADS": half}) for i, x in enumerate("ab")]


# --- a fresh database and Redis DB per configuration -------------------------------------------

def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + name))


def database_recreate(base: str, name: str, drop_only: bool = False) -> None:
    """DROP and CREATE database `name` on the server of `base`, through its `postgres` database."""
    import psycopg

    with psycopg.connect(database_url(base, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- starting and watching the processes ------------------------------------------------------

def start_config(env: dict[str, str], specs: list[WorkerSpec], port: int,
                 logs: Path) -> tuple[subprocess.Popen, list[subprocess.Popen]]:
    """The web as bench/e2e.py starts it (migrated already, so --no-migrate) and `specs`' workers,
    each in its own session (stack_stop kills the group) and, where given, on its own CPUs."""
    import httpx
    import redis

    taken = [p for p in (port, *(s.metrics_port for s in specs)) if _port_taken(p)]
    if taken:
        # A metrics port answered by another process would credit its counters to these workers.
        raise SystemExit(f"ports {taken} are in use: pick another --port (the workers' metrics take the next ones)")
    py = sys.executable
    workers = []
    for spec in specs:
        wenv = {**env, "WORKER_NAME": spec.name, "WORKER_METRICS_PORT": str(spec.metrics_port), **spec.extra_env}
        # scripts/run.py execs Celery (a solo pool: one process), so the affinity set here, before
        # the exec, is the worker's, and Popen's pid is the worker's pid.
        pin = _pinner(spec.cpus) if spec.cpus else None
        log = logs / f"worker-{spec.name.replace('@', '_')}.log"
        workers.append(subprocess.Popen([py, "scripts/run.py", "worker"], env=wenv, cwd=ROOT, preexec_fn=pin,
                                        start_new_session=True, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    web = subprocess.Popen([py, "scripts/run.py", "web", "--no-migrate"], env={**env, "PORT": str(port)}, cwd=ROOT,
                           start_new_session=True, stdout=(logs / "web.log").open("wb"), stderr=subprocess.STDOUT)
    procs = [web, *workers]
    r = redis.Redis.from_url(env["REDIS_URL"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        try:
            # Ready: the web answers, every worker's drain loop has taken its place in the model's
            # workers hash (loop names end in `-<pid>`, or `-<pid>-2` for a second loop), and
            # every worker's metrics port answers (the split is read from there).
            loops = [k.decode() for k in r.hkeys(f"embed:workers:{MODEL}")]
            if (httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
                    and all(any(f"-{w.pid}" in loop for loop in loops) for w in workers)
                    and all(worker_metrics(s.metrics_port) is not None for s in specs)):
                return web, workers
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.5)
    exited = [f"{p.args[2]} (pid {p.pid}, status {p.returncode})" for p in procs if p.poll() is not None]
    stack_stop(procs, timeout=5)
    raise SystemExit(f"stack not ready{'; exited: ' + ', '.join(exited) if exited else ''}; logs in {logs}")


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pinner(cpus: set[int]) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, cpus)
    return pin


def worker_metrics(port: int) -> dict[str, float] | None:
    """The drain loop's counters from a worker's Prometheus endpoint: forward passes, texts in
    them, seconds in them (summed over models: the workers here serve one)."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    out = {"passes": 0.0, "texts": 0.0, "pass_seconds": 0.0}
    names = {"embed_batch_texts_count": "passes", "embed_batch_texts_sum": "texts",
             "embed_inference_seconds_sum": "pass_seconds"}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children, as of now (a child that
    ended in between takes its seconds with it; the web's and workers' processes live throughout)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def service_pids(db_name: str, redis_port: int) -> tuple[list[int], list[int]]:
    """The PostgreSQL backends of `db_name` (their title names the database) and the Redis server."""
    pg, rd = [], []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("postgres:") and f" {db_name} " in cmd:
            pg.append(p.info["pid"])
        elif "redis-server" in cmd and f":{redis_port}" in cmd:
            rd.append(p.info["pid"])
    return pg, rd


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (guest time is inside user; steal is not ours)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))


@dataclass
class Snapshot:
    wall: float
    machine: float
    load: float
    web: float
    postgres: float
    redis: float
    workers: list[tuple[float, dict[str, float]]]


def snapshot(web: subprocess.Popen, workers: list[subprocess.Popen], specs: list[WorkerSpec],
             db_name: str, redis_port: int) -> Snapshot:
    pg, rd = service_pids(db_name, redis_port)
    me = psutil.Process().cpu_times()
    return Snapshot(
        wall=time.perf_counter(), machine=machine_busy(), load=me.user + me.system, web=cpu_seconds([web.pid]),
        postgres=cpu_seconds(pg), redis=cpu_seconds(rd),
        workers=[(cpu_seconds([w.pid]), worker_metrics(s.metrics_port) or {}) for w, s in zip(workers, specs)],
    )


def scenario(url: str, key: str, name: str, scale: float, web: subprocess.Popen, workers: list[subprocess.Popen],
             specs: list[WorkerSpec], db_name: str, redis_port: int) -> dict:
    clients, per_client, per_request, seed = SCENARIOS[name]
    per_client = max(1, int(per_client * scale))
    bodies = request_bodies(clients, per_client, per_request, seed)
    texts = clients * per_client * per_request
    before = snapshot(web, workers, specs, db_name, redis_port)
    elapsed, _ = asyncio.run(run_clients(url, key, bodies))
    # Workers count a pass after its replies went out: a moment for the last pass's counter.
    time.sleep(0.2)
    after = snapshot(web, workers, specs, db_name, redis_port)
    wall = after.wall - before.wall
    split = []
    for spec, (c0, m0), (c1, m1) in zip(specs, before.workers, after.workers):
        passes = m1.get("passes", 0.0) - m0.get("passes", 0.0)
        done = m1.get("texts", 0.0) - m0.get("texts", 0.0)
        split.append({
            "worker": spec.name, "cpus": sorted(spec.cpus) if spec.cpus else None, "texts": int(done),
            "passes": int(passes), "mean_pass_texts": done / passes if passes else 0.0,
            "pass_seconds": m1.get("pass_seconds", 0.0) - m0.get("pass_seconds", 0.0),
            "cpu_s": c1 - c0, "cpu_cores": (c1 - c0) / wall,
        })
    ours = sum(w["cpu_s"] for w in split) + (after.web - before.web) + (after.load - before.load)
    return {
        # texts_counted: the workers' passes over the load; below `texts` where a counter missed a
        # pass (a worker's metrics port not answering), above where a warm-up text came late.
        "texts": texts, "texts_counted": sum(w["texts"] for w in split), "seconds": elapsed,
        "texts_per_s": texts / elapsed,
        "workers": split,
        "web_cpu_s": after.web - before.web, "load_cpu_s": after.load - before.load,
        "postgres_cpu_s": after.postgres - before.postgres, "redis_cpu_s": after.redis - before.redis,
        "ours_cpu_s": ours, "machine_busy_cores": (after.machine - before.machine) / wall,
        "wall_s": wall, "cores": psutil.cpu_count(),
    }


def run_config(config: str, env: dict[str, str], port: int, scale: float) -> dict:
    base_url = env["DATABASE_URL"]
    db_name = f"{urlsplit(base_url).path.lstrip('/')}_{config}"
    redis_port = urlsplit(env["REDIS_URL"]).port or 6379
    import redis

    database_recreate(base_url, db_name)
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    cenv = {**env, "DATABASE_URL": database_url(base_url, db_name)}
    logs = Path(env["VAR_DIR"]) / config
    logs.mkdir(parents=True, exist_ok=True)
    specs = plan(config, port)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=cenv, cwd=ROOT, check=True,
                       capture_output=True)
        key = bench_key(cenv, f"scale-{config}")
        started = time.monotonic()
        web, workers = start_config(cenv, specs, port, logs)
        print(f"{config}: ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        try:
            url = f"http://127.0.0.1:{port}"
            # e2e's warm-up: connections, threads, and a first pass in each drain loop.
            asyncio.run(run_clients(url, key, request_bodies(8, 4, 1, seed=90)))
            out = {name: scenario(url, key, name, scale, web, workers, specs, db_name, redis_port)
                   for name in SCENARIOS}
        finally:
            stack_stop([web, *workers])
    finally:
        database_recreate(base_url, db_name, drop_only=True)
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    time.sleep(0.5)  # the killed process groups' last members to go
    leftover = [p.pid for p in psutil.process_iter(["environ"]) if _ours(p, cenv)]
    return {"workers": [{"name": s.name, "metrics_port": s.metrics_port, "env": s.extra_env,
                         "cpus": sorted(s.cpus) if s.cpus else None} for s in specs],
            "leftover_processes": leftover, **out}


def _ours(proc: psutil.Process, env: dict[str, str]) -> bool:
    """A process of this configuration still running (its DATABASE_URL and SECRET_KEY are ours)."""
    try:
        penv = proc.info.get("environ") or {}
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return False
    return (proc.pid != os.getpid() and penv.get("DATABASE_URL") == env["DATABASE_URL"]
            and penv.get("SECRET_KEY") == env["SECRET_KEY"])


# --- the report -------------------------------------------------------------------------------

def table(raw: dict, configs: dict[str, dict]) -> str:
    b32 = raw["batch32_texts_per_s"]
    best = max(raw["onnx_batch32_texts_per_s"], raw.get("bf16_batch32_texts_per_s", 0.0))
    best_name = "bf16" if best != raw["onnx_batch32_texts_per_s"] else "ONNX"
    lines = [f"raw model.encode batch 32: {b32:.0f} texts/s; raw {best_name} batch 32 (the workers' engine): "
             f"{best:.0f} texts/s; {psutil.cpu_count()} cores", "",
             "| workers | load | texts/s | vs raw torch b32 | vs raw " + best_name + " b32 | vs one worker "
             "| worker CPU (cores) | web CPU | load gen CPU | postgres + redis CPU | other processes "
             "| machine busy (cores) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    labels = {"miss_single_c32": "1-text, 32 clients", "miss_batch32_c4": "32-text, 4 clients"}
    for config, res in configs.items():
        for name, label in labels.items():
            r = res[name]
            one = configs.get("one", {}).get(name)
            wall = r["wall_s"]
            vs_one = f"{r['texts_per_s'] / one['texts_per_s']:.2f}x" if one else "-"
            worker_cores = " + ".join(f"{w['cpu_cores']:.2f}" for w in r["workers"])
            services = (r["postgres_cpu_s"] + r["redis_cpu_s"]) / wall
            # Whatever else ran (others' processes on a shared machine, PostgreSQL's own background
            # processes): a large figure here means the run was not alone and its figures are low.
            other = r["machine_busy_cores"] - r["ours_cpu_s"] / wall - services
            lines.append(
                f"| {config} | {label} | {r['texts_per_s']:.0f} | {r['texts_per_s'] / b32:.2f}x "
                f"| {r['texts_per_s'] / best:.2f}x | {vs_one} | {worker_cores} "
                f"| {r['web_cpu_s'] / wall:.2f} | {r['load_cpu_s'] / wall:.2f} "
                f"| {services:.2f} | {other:.2f} | {r['machine_busy_cores']:.2f} |")
    counted = [f"{c} {n}: {r['texts_counted']} of {r['texts']}" for c, res in configs.items()
               for n, r in res.items() if n in labels and r["texts_counted"] != r["texts"]]
    if counted:
        lines += ["", "Texts the workers' counters saw differ from the texts sent: " + "; ".join(counted)]
    lines += ["", "| workers | load | worker | CPUs | texts | passes | mean pass | seconds in passes (all loops) "
              "| CPU s | CPU ms/text |", "|---|---|---|---|---|---|---|---|---|---|"]
    for config, res in configs.items():
        for name, label in labels.items():
            for w in res[name]["workers"]:
                per_text = f"{w['cpu_s'] / w['texts'] * 1000:.2f}" if w["texts"] else "-"
                cpus = ",".join(map(str, w["cpus"])) if w["cpus"] else "all"
                lines.append(f"| {config} | {label} | {w['worker']} | {cpus} | {w['texts']} | {w['passes']} "
                             f"| {w['mean_pass_texts']:.1f} | {w['pass_seconds']:.2f} | {w['cpu_s']:.2f} "
                             f"| {per_text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8785, help="the web's; the workers' metrics on the next ports")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts (0.2: a smoke run)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of {','.join(CONFIGS)}")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        raise SystemExit(f"--configs: choose among {', '.join(CONFIGS)}")
    if not os.environ.get("DATABASE_URL", "").startswith("postgres") or not os.environ.get("REDIS_URL"):
        raise SystemExit("set DATABASE_URL (PostgreSQL: a database per configuration is created and dropped "
                         "beside it) and REDIS_URL (its DB is flushed before each configuration)")
    env = bench_env("ep-scale-")
    os.environ.update(env)
    started = time.monotonic()
    raw = bench_raw(env["EMBED_ONNX_DIR"])
    print(f"raw: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    results = {}
    for config in configs:
        results[config] = run_config(config, env, args.port, args.scale)
    result = {"raw": raw, "configs": results, "cpu_count": psutil.cpu_count(), "scale": args.scale,
              "seconds": time.monotonic() - started}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    print(table(raw, results))
    leftover = {c: r["leftover_processes"] for c, r in results.items() if r["leftover_processes"]}
    if leftover:
        print(f"\nleft running after stack_stop: {leftover}", file=sys.stderr)
    print(f"\n{time.monotonic() - started:.0f} s in all; logs in {env['VAR_DIR']}", file=sys.stderr)


if __name__ == "__main__":
    main()
