"""CPU cost of one request inside the web process, without gunicorn or a client.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python bench/profile_hit.py [--n 3000] [--profile]

Calls the WSGI application in-process with a cache-hit `POST /v1/embeddings` (one text, a
tenant on a `bench` tier, vectors seeded straight into the cache) and prints microseconds per
request. --profile prints the cProfile top 40 by cumulative time (SORT=tottime TOP=60 to
change); --path picks another endpoint; --miss sends unique texts to a worker subprocess
(the CPU printed is still this process's: the web's share of a miss).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import bench_env, short_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--path", default="/v1/embeddings")
    parser.add_argument("--miss", action="store_true", help="unique texts (cache misses): starts a worker subprocess")
    parser.add_argument("--split", action="store_true", help="CPU per request inside the main steps (thread CPU time)")
    parser.add_argument("--floor", action="store_true",
                        help="then the floor of issue 21 (bench/floor_urls.py: one Redis GET answering the hit's bytes), "
                             "in the same process, and the ratio of the two")
    args = parser.parse_args()
    os.environ.update(bench_env("ep-prof-"))

    import django

    django.setup()
    import numpy as np
    import orjson
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from accounts.models import Tier
    from accounts.services import api_key_create, tenant_create
    from embeddings.cache import cache_upsert, text_key
    from embeddings.registry import model_get
    from embedplatform.wsgi import application

    Tier.objects.update_or_create(name="bench", defaults=dict(
        daily_limit=10**9, monthly_limit=10**9, requests_per_minute=10**9, max_batch_size=2048,
        max_job_texts=100_000, server_compute=True, priority=10))
    tenant, _ = tenant_create(email=f"prof-{time.time_ns()}@example.com", tier="bench")
    _, key = api_key_create(tenant=tenant)
    spec = model_get("all-MiniLM-L6-v2")
    texts = short_texts(200, seed=7)
    rng = np.random.default_rng(0)
    cache_upsert(model=spec.name, version=spec.version, scope=tenant.pk,
                 rows=[(text_key(t), 9, rng.standard_normal(spec.dims).astype("f4")) for t in texts])

    worker = None
    if args.miss:
        import subprocess

        texts = short_texts(args.n + 400, seed=time.time_ns() % 10**9)
        worker = subprocess.Popen([sys.executable, "scripts/run.py", "worker"], cwd=ROOT, env=dict(os.environ),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from dispatch.keys import alive_key
        from embedplatform.redisconn import redis_client

        while not redis_client().exists(alive_key(spec.name)):
            time.sleep(0.5)

    answers: list[bytes] = []

    def call(i: int, path: str = args.path) -> int:
        field = "text" if path == "/v1/embed" else "input"
        body = orjson.dumps({"model": spec.name, field: texts[i % len(texts)] if not args.miss else texts[i + 200]})
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {key}", "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }
        status = []
        out = application(environ, lambda s, h, exc_info=None: status.append(s))
        answers[:] = [b"".join(out)]
        out.close()
        return int(status[0].split()[0])

    for i in range(200):
        assert call(i - 200 if args.miss else i) == 200
    gc_spent = gc_timer()
    split = steps_split() if args.split else None
    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for i in range(args.n):
        call(i)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{args.path}: {wall / args.n * 1e6:.0f} us wall, {cpu / args.n * 1e6:.0f} us CPU per request (n={args.n})")
    print(f"  gc: {gc_spent[0] / args.n * 1e6:.0f} us per request in {gc_spent[1]} collections")
    if split:
        for name, seconds in split.items():
            print(f"  {name}: {seconds / args.n * 1e6:.0f} us CPU per request")
    if args.floor:
        from floor_urls import FLOOR_KEY

        from embedplatform.redisconn import redis_client

        redis_client().set(FLOOR_KEY, answers[0])
        for i in range(200):
            assert call(i, "/bench/floor") == 200
        floor_cpu, floor_wall = time.process_time(), time.perf_counter()
        for i in range(args.n):
            call(i, "/bench/floor")
        floor_cpu, floor_wall = time.process_time() - floor_cpu, time.perf_counter() - floor_wall
        print(f"/bench/floor: {floor_wall / args.n * 1e6:.0f} us wall, {floor_cpu / args.n * 1e6:.0f} us CPU per request; "
              f"{args.path} is {cpu / floor_cpu:.2f}x its CPU, {wall / floor_wall:.2f}x its wall time")
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(int(os.environ.get("TOP", "40")))
    if worker is not None:
        worker.terminate()
        worker.wait(20)


def gc_timer() -> list:
    """[seconds, collections] the garbage collector spends from now on (gc.callbacks)."""
    import gc

    spent: list = [0.0, 0]
    began = [0.0]

    def timed(phase, info):
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - began[0]
            spent[1] += 1

    gc.callbacks.append(timed)
    return spent


def steps_split() -> dict[str, float]:
    """Wraps the request's main steps to add up the CPU time (this thread's) spent inside each."""
    import dispatch.local
    import embeddings.cache
    import embeddings.serving

    spent: dict[str, float] = {}

    def wrap(module, name: str) -> None:
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            began = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.thread_time() - began

        setattr(module, name, timed)

    from rest_framework.views import APIView

    import embeddings.views

    for module, names in [(embeddings.serving, ["embed_plan", "embed_finish", "admit", "usage_record", "usage_hits"]),
                          (embeddings.cache, ["cache_lookup"]),
                          (dispatch.local, ["work_wait"]),
                          (embeddings.views, ["embeddings_body", "json_answer"]),
                          # DRF's machinery around the view's own code
                          (APIView, ["dispatch", "initialize_request", "initial", "perform_authentication",
                                     "perform_content_negotiation", "finalize_response"]),
                          (embeddings.views.EmbeddingCreateApi, ["post"])]:
        for name in names:
            wrap(module, name)
    return spent


if __name__ == "__main__":
    main()
