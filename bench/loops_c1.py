"""Single-request latency through real drain loops, one loop against two, in one process.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python bench/loops_c1.py

Same runtime (big passes on a one-thread session, as on a CPU without AMX), real Redis work
lists and replies and the PostgreSQL upsert, no web tier: one client submits a text and waits
for its vectors, 250 times per configuration; the configurations alternate four times. With two
loops, sequential requests alternate between them (Redis serves the longest-blocked BLPOP
first); this measures what that costs (DECISIONS #22).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import bench_env  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def main() -> None:
    os.environ.update(bench_env("ep-loops-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "embedplatform.settings.base"
    import django

    django.setup()
    from django.db import connections

    from dispatch.local import LOCAL, work_wait
    from embeddings.cache import cache_upsert, text_key
    from embeddings.registry import model_get
    from embedplatform.redisconn import redis_client
    from workers.drain import Drainer
    from workers.runtime import ModelRuntime

    runtime = ModelRuntime(model_get(MODEL), "cpu", threads=1, onnx_threads=2, precision="fp32")

    def measure(n_loops: int, n: int = 250) -> tuple[float, list[int]]:
        loops = [Drainer(runtimes={MODEL: runtime}, redis=redis_client(), max_texts=64, max_tokens=16384,
                         upsert=cache_upsert, name=f"loops-c1-{i}", block=0.2) for i in range(n_loops)]
        loops[0].heartbeat(force=True)
        threads = [loop.start(on_exit=connections.close_all) for loop in loops]
        latencies = []
        try:
            for _ in range(n):
                text = f"latency probe {uuid.uuid4().hex} words here"
                started = time.perf_counter()
                handle = LOCAL.submit(model=runtime.spec, texts=[text], keys=[text_key(text)], scope=1, wait=10,
                                      tenant=0)
                LOCAL.send(handle)
                work_wait(handle.item, wait=10, dims=384)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            for loop in loops:
                loop.stop()
            for t in threads:
                t.join(timeout=5)
        return statistics.median(latencies[20:]), [loop.stats.texts for loop in loops]

    for _ in range(4):
        for n_loops in (1, 2):
            p50, per_loop = measure(n_loops)
            print(f"loops={n_loops}: p50 {p50:.2f} ms, texts per loop {per_loop}", flush=True)


if __name__ == "__main__":
    main()
