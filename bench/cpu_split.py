"""Where the CPU goes: 32 clients send single-text requests; per-process CPU seconds.

    [PER_CLIENT=30] .venv/bin/python bench/cpu_split.py [EMBED_THREADS=1 ...]   # extra args: env overrides

Starts web + worker as bench/e2e.py does, runs 32 x PER_CLIENT unique single-text requests
from 32 clients, and prints texts/s, the CPU seconds each process used (and per text), the
load generator's, the rest of the machine's (PostgreSQL, Redis), and the worker's batch
counters (requests per forward pass).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e

ROOT = e2e.ROOT


def main() -> None:
    env = e2e.bench_env("ep-cpu-split-")
    env.update(dict(a.split("=", 1) for a in sys.argv[1:]))
    port = 8766
    procs = e2e.start_stack(env, port)
    try:
        key = e2e.bench_key(env, "cpu")
        watched = []
        for p in procs:
            parent = psutil.Process(p.pid)
            watched += [parent, *parent.children(recursive=True)]
        before = {p.pid: p.cpu_times() for p in watched}
        me, machine = psutil.Process(), psutil.cpu_times()
        me_before = me.cpu_times()
        texts = e2e.short_texts(32 * int(os.environ.get("PER_CLIENT", "30")), seed=int(time.time()))
        bodies = [[{"model": "all-MiniLM-L6-v2", "input": t} for t in texts[i::32]] for i in range(32)]
        elapsed, lat = asyncio.run(e2e.run_clients(f"http://127.0.0.1:{port}", key, bodies))
        print(f"{len(texts) / elapsed:.0f} texts/s, p50 {e2e.pct(lat, 50) * 1000:.0f} ms, {elapsed:.1f} s")
        machine_s = sum(psutil.cpu_times()) - psutil.cpu_times().idle - (sum(machine) - machine.idle)
        stack_s = 0.0
        for p in watched:
            b, a = before[p.pid], p.cpu_times()
            used = a.user + a.system - b.user - b.system
            stack_s += used
            print(f"  {p.pid} {' '.join(p.cmdline()[1:3])[-40:]}: {used:.2f} CPU s ({used / len(texts) * 1000:.2f} ms/text)")
        client_s = sum(me.cpu_times()[:2]) - sum(me_before[:2])
        print(f"  the load generator (this process): {client_s:.2f} CPU s")
        print(f"  the rest of the machine (PostgreSQL, Redis, ...): {machine_s - stack_s - client_s:.2f} CPU s;"
              f" all: {machine_s:.2f} CPU s in {elapsed:.1f} s")
        client = redis.Redis.from_url(env.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
        for k in client.keys("embed:stats:*"):
            print(" ", k.decode(), {f.decode(): int(v) for f, v in client.hgetall(k).items()})
            client.delete(k)
    finally:
        e2e.stack_stop(procs)


if __name__ == "__main__":
    main()
