"""Where the time goes under load: py-spy samples of the web and the worker, grouped by step.

    .venv/bin/python bench/spy.py [--seconds 20] [--rate 200]   # DATABASE_URL / REDIS_URL, else embedded

Starts web and worker as bench/e2e.py does, then runs two loads, each while py-spy (requirements-dev)
samples every web process (granian's workers) and the embedding worker:
  hits    cache-hit single-text requests from 32 clients
  misses  unique single-text requests from 32 clients
Each sample is put in the first step of STEPS its stack passes through (innermost step first, so a
Redis call inside the admission counts as the admission's round trip), and the table gives each
step's share of the process's samples that were running (py-spy's default: idle threads, such as
one waiting for a reply, are not sampled). Also prints each process's CPU seconds over the load,
so a share converts to CPU per request. Raw stacks land in VAR_DIR/spy-<load>-<role>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import bench_env, bench_key, request_bodies, run_clients, short_texts, stack_stop, start_stack  # noqa: E402

# (step, substrings of a frame that put a sample in it), innermost first: the first whose frame
# appears deepest in the stack wins.
WEB_STEPS = [
    ("admission: the Redis round trip (accounts/quotas.admit)", ("admit (accounts/quotas.py",)),
    ("wait for the worker's reply (dispatch)", ("work_wait (dispatch/local.py", "reply_wait (dispatch/frames.py")),
    ("cache lookup: hot tier, Postgres (embed_plan)", ("embed_plan (embeddings/serving.py",)),
    ("vectors out: shape, body, JSON (embed_finish, json_answer)", ("embed_finish (", "json_answer (", "embeddings_body (")),
    ("the rest of embed_serve (usage, stats, in-flight)", ("embed_serve (embeddings/serving.py",)),
    ("body parse and validation (DRF request.data, serializer)", ("is_valid (", "_parse (rest_framework")),
    ("authentication (API key, cached)", ("perform_authentication (",)),
    ("DRF's view machinery (negotiation, finalize, the rest)", ("dispatch (rest_framework/views.py",)),
    ("Django: middleware, URL resolution, signals", ("django/core/handlers",)),
]
WORKER_STEPS = [
    ("forward pass (runtime.encode: tokenize + model)", ("encode (workers/runtime.py", "encode (workers/rerank.py")),
    ("store: cache upsert into Postgres", ("store (workers/", "__call__ (workers/answers.py")),
    ("intake: take items from Redis", ("take (workers/",)),
    ("replies, usage, stats (Redis pipeline)", ("serve (workers/drain.py",)),
    ("heartbeats", ("heartbeat (workers/drain.py", "_beat_forever (")),
    ("job feed (Postgres polling)", ("step (workers/jobpasses.py", "jobfeed.py")),
]


NO_PYTHON = "no Python frame: granian's own threads (HTTP, I/O, in Rust), a loop's native code"
GLUE = ("granian's WSGI glue (calling Django, writing the answer)", ("granian/wsgi.py",))


def step_of(stack: str, steps: list[tuple[str, tuple[str, ...]]]) -> str:
    frames = [frame for frame in stack.split(";") if frame]
    if not frames:
        return NO_PYTHON
    steps = [*steps, GLUE]
    for frame in reversed(frames):  # innermost first
        for name, marks in steps:
            if any(m in frame for m in marks):
                return name
    return "other (server, threads, interpreter)"


def shares(path: Path, steps: list[tuple[str, tuple[str, ...]]]) -> tuple[int, dict[str, int]]:
    counts: dict[str, int] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[step_of(stack, steps)] += int(n)
        total += int(n)
    return total, counts


def children(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children()]


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each of a process's threads, whatever a sampler can see: granian names its Rust
    threads and the Python ones alike (tokio-rt-worker)."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def spy(pids: dict[str, list[int]], seconds: float, rate: int, out: Path, load: str,
        native: bool = False) -> dict[str, subprocess.Popen]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    procs = {}
    for role, role_pids in pids.items():
        for pid in role_pids:
            path = out / f"spy-{load}-{role}-{pid}.txt"
            procs[f"{role}:{pid}"] = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                 "--format", "raw", *(["--native"] if native else ["--nonblocking"]), "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8775)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true",
                        help="native frames too (py-spy pauses the processes to read them: slower)")
    args = parser.parse_args()
    env = bench_env("ep-spy-")
    os.environ.update(env)
    out = Path(env["VAR_DIR"])
    procs = start_stack(env, args.port)
    worker, web = procs
    try:
        key = bench_key(env, "spy")
        url = f"http://127.0.0.1:{args.port}"
        web_pids = children(web.pid)
        granian = [c for p in web_pids for c in children(p)] or web_pids  # run.py -> granian -> its workers
        worker_pids = [c for c in children(worker.pid)] or [worker.pid]  # run.py -> celery
        pids = {"web": granian, "worker": worker_pids}
        hot = short_texts(200, seed=5)
        asyncio.run(run_clients(url, key, request_bodies(8, 25, 1, seed=5, reuse=hot)))  # warm: hits from now on
        rows = []
        threads: list[tuple[str, int, dict[str, float], int]] = []
        for load, bodies in (
            ("hits", lambda n: request_bodies(32, n, 1, seed=5, reuse=hot)),
            ("misses", lambda n: request_bodies(32, n, 1, seed=time.time_ns() % 10**9)),
        ):
            before = {pid: cpu_seconds(pid) for ps in pids.values() for pid in ps}
            threads_before = {pid: thread_cpu(pid) for pid in pids["web"]}
            sampling = spy(pids, args.seconds, args.rate, out, load, native=args.native)
            done = 0
            started = time.perf_counter()
            while time.perf_counter() - started < args.seconds:  # rounds of 32 clients until the sampling ends
                asyncio.run(run_clients(url, key, bodies(20)))
                done += 32 * 20
            elapsed = time.perf_counter() - started
            for p in sampling.values():
                p.wait(timeout=args.seconds + 30)
            spent = {pid: cpu_seconds(pid) - before[pid] for pid in before}
            by_thread: dict[str, float] = collections.Counter()
            busy = 0  # threads that used any CPU
            for pid in pids["web"]:
                used = sorted((seconds - threads_before[pid].get(tid, 0.0) for tid, seconds in thread_cpu(pid).items()),
                              reverse=True)
                by_thread["the busiest thread of each process"] += used[0] if used else 0.0
                by_thread["the second busiest"] += used[1] if len(used) > 1 else 0.0
                by_thread["all the others"] += sum(used[2:])
                busy += sum(1 for u in used if u > 0)
            threads.append((load, done, by_thread, busy))
            for role, steps in (("web", WEB_STEPS), ("worker", WORKER_STEPS)):
                total, counts = 0, collections.Counter()
                for pid in pids[role]:
                    path = out / f"spy-{load}-{role}-{pid}.txt"
                    if path.exists():
                        t, c = shares(path, steps)
                        total += t
                        counts.update(c)
                cpu = sum(spent[pid] for pid in pids[role])
                rows.append((load, role, done / elapsed, cpu * 1e6 / done, total, counts))
    finally:
        stack_stop(procs)
    for load, done, by_thread, busy in threads:
        print(f"\n### {load}: the web processes' CPU by thread (/proc; no sampling)\n")
        print("| threads | CPU per request | share |\n|---|---|---|")
        whole = sum(by_thread.values()) or 1.0
        for name, seconds in by_thread.items():
            print(f"| {name} | {seconds * 1e6 / done:.0f} us | {seconds / whole:.0%} |")
        print(f"\n{busy} threads of the web processes used CPU.")
    for load, role, rps, cpu_per, total, counts in rows:
        print(f"\n### {load}: {role} ({rps:.0f} requests/s, {cpu_per:.0f} us of {role} CPU per request, "
              f"{total} running samples)\n")
        print("| step | share of running samples | ≈ CPU per request |\n|---|---|---|")
        for name, n in counts.most_common():
            print(f"| {name} | {n / max(1, total):.0%} | {cpu_per * n / max(1, total):.0f} us |")


if __name__ == "__main__":
    main()
