"""The worker bootstep that runs the drain loop inside a Celery worker process.

The Celery worker is the process host: it is what Flower, `celery inspect` and
`celery control` see, it consumes the model's Celery queue (embed.<model>), and it owns
start-up and shutdown. The drain loop runs in a thread of the same process, started
after the pool; it loads the models there, so nothing touches CUDA before a fork (the
worker runs with the solo pool: there is no fork at all) and Celery's start-up budget is
not spent on the model load. See docs/DECISIONS.md.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from django.conf import settings
from django.db import connection, connections

from dispatch.keys import PROVIDER_QUEUE, model_queue, provider_alive_key
from embeddings.cache import cache_upsert
from embeddings.registry import model_names, model_specs, models_pull
from embedplatform.redisconn import redis_client
from workers.calibration import calibration_store
from workers.devices import cpu_threads, device_parse
from workers.drain import Drainer
from workers.jobfeed import JobFeed
from workers.rerank import RerankRuntime
from workers.runtime import ModelRuntime
from workers.taskevents import PassEvents, task_events_on

if TYPE_CHECKING:
    from celery.worker import WorkController

    from embeddings.registry import ModelSpec

logger = logging.getLogger(__name__)


def _cache_upsert(**kwargs: Any) -> int:
    try:
        return cache_upsert(**kwargs)
    except Exception:
        connection.close()  # a broken connection must not poison every later batch
        raise


def _calibrate(runtimes: dict[str, ModelRuntime | RerankRuntime]) -> None:
    for name, runtime in runtimes.items():
        if not isinstance(runtime, ModelRuntime):
            continue  # a reranker's scores have no int8/uint8 outputs
        try:
            calibration_store(runtime, redis_client())
        except Exception:  # int8/uint8 answers 503 for this model meanwhile; float and binary serve
            logger.exception("could not calibrate %s for int8/uint8 outputs", name)


def runtime_load(spec: ModelSpec, device: str, threads: int, onnx_threads: int) -> ModelRuntime | RerankRuntime:
    """The model's runtime with its own backend and precision (EMBED_MODELS), or the worker's
    (EMBED_BACKEND, EMBED_PRECISION) where it says auto. A GPU runs torch whatever is asked. A
    reranker runs on torch (workers/rerank.py)."""
    backend = spec.backend if spec.backend != "auto" else settings.EMBED_BACKEND
    precision = spec.precision if spec.precision != "auto" else settings.EMBED_PRECISION
    if spec.kind == "rerank":
        return RerankRuntime(spec, device, threads=threads, precision=spec.precision)
    return ModelRuntime(spec, device, threads=threads, backend=backend if device == "cpu" else "torch",
                        precision=precision, onnx_threads=onnx_threads)


class DrainStep(bootsteps.StartStopStep):
    label = "drain"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: WorkController, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.threads: list[threading.Thread] = []
        self.drainers: list[Drainer] = []
        self.events: PassEvents | None = None
        self._stopping = threading.Event()

    def _models(self, worker: WorkController) -> list[str]:
        consumed = set((worker.app.amqp.queues.consume_from or {}).keys())
        # The hub models it serves, downloaded once where none is under VAR_DIR/models: only a
        # worker downloads, never the web (DECISIONS #40). Where it cannot, start-up stops here,
        # naming the model and how to provide it.
        models_pull([name for name in model_names() if model_queue(name) in consumed],
                    log=lambda line: logger.info("%s", line))
        return [name for name, spec in model_specs().items() if spec.queue in consumed]

    def start(self, worker: WorkController) -> None:
        # At interpreter exit (a worker that was never stopped, e.g. one a test started in-process),
        # quiet the threads before the servers they talk to go away: atexit runs this ahead of
        # the embedded Redis' own shutdown, which registered first.
        atexit.register(self._quiet)
        hostname: str = worker.hostname  # type: ignore[attr-defined]  # set by WorkController, not in its stubs

        if PROVIDER_QUEUE in set((worker.app.amqp.queues.consume_from or {}).keys()):
            self.beat = threading.Thread(target=self._provider_heartbeat, args=(hostname,),
                                         name="provider-heartbeat", daemon=True)
            self.beat.start()
        models = self._models(worker)
        if not models:
            logger.info("this worker consumes no model queue; no drain loop")
            return
        # Each pass as a Celery task event under this worker's node name, for Flower, while the
        # worker sends task events (workers/taskevents.py).
        self.events = PassEvents(worker.app, hostname=hostname,
                                 enabled=lambda: task_events_on(getattr(worker, "consumer", None)))
        loader = threading.Thread(target=self._run, args=(models, hostname), name="drain", daemon=True)
        self.threads.append(loader)
        loader.start()

    def _provider_heartbeat(self, hostname: str) -> None:
        """Tells the API a provider worker is alive (so BYOK misses get a fast 503 when none is)."""
        failing = False
        while True:
            try:
                redis_client().set(provider_alive_key(), hostname, ex=10)
                failing = False
            except Exception as exc:  # Redis away: keep trying (the API refuses meanwhile), log once
                if not failing and not self._stopping.is_set():
                    logger.warning("provider heartbeat failed: %s", exc.__class__.__name__)
                failing = True
            if self._stopping.wait(2.0):
                return

    def _run(self, models: list[str], hostname: str) -> None:
        try:
            device = device_parse(settings.EMBED_DEVICE)
            threads, onnx_threads = cpu_threads(settings.EMBED_THREADS) if device == "cpu" else (0, 0)
            runtimes = {m: runtime_load(model_specs()[m], device, threads, onnx_threads) for m in models}
        except Exception:
            logger.exception("could not load models %s; this worker serves nothing", models)
            return
        # Drain loops: one per pass the runtimes run well side by side (ModelRuntime.parallel_passes:
        # two on a CPU, except with bfloat16 on AMX; DECISIONS #22, #23), unless EMBED_DRAIN_THREADS
        # says. Each takes whatever waits when it is free, requests and job chunks alike; this
        # thread runs the first.
        count = settings.EMBED_DRAIN_THREADS or min(rt.parallel_passes for rt in runtimes.values())
        # The Celery node name (':' made '_': it is part of Redis keys) and this process's id,
        # `embed-cpu@host-4242`, the other loops `-2`, `-3`: unique per process, so two workers of
        # one node name (two `make worker` on one host and device) keep their own heartbeat keys and
        # entries in the model's workers hash, and one stopping leaves the other's (DECISIONS #38).
        name = f"{hostname.replace(':', '_')}-{os.getpid()}"
        self.drainers = [
            Drainer(
                runtimes=runtimes,
                redis=redis_client(),
                max_texts=settings.MAX_BATCH_TEXTS,
                max_tokens=settings.MAX_BATCH_TOKENS,
                upsert=_cache_upsert,
                name=name if i == 0 else f"{name}-{i + 1}",
                jobs=JobFeed(lease_seconds=settings.JOB_LEASE_SECONDS, poll_seconds=settings.JOB_POLL_SECONDS,
                             chunks_per_pass=max(1, settings.JOB_PASS_TEXTS // settings.JOB_CHUNK_TEXTS)),
                # Loops of fewer threads take longer per forward pass: keep a job's forward
                # passes as short as one loop's were, so sync requests wait no longer behind it.
                job_forward_texts=max(1, settings.MAX_BATCH_TEXTS // count),
                events=self.events,
            )
            for i in range(count)
        ]
        if self._stopping.is_set():
            return
        self.threads += [d.start(name=f"drain-{i}", on_exit=connections.close_all)
                         for i, d in enumerate(self.drainers[1:], start=2)]
        # int8/uint8 ranges (workers/calibration.py): beside the drain loops, so serving starts at once.
        threading.Thread(target=_calibrate, args=(runtimes,), name="calibrate", daemon=True).start()
        try:
            self.drainers[0].run()
        finally:
            connection.close()

    def _quiet(self) -> None:
        self._stopping.set()
        for drainer in self.drainers:
            drainer.stop()

    def stop(self, worker: WorkController) -> None:
        self._quiet()
        for thread in list(self.threads):
            thread.join(timeout=10)
        if self.events is not None:
            self.events.close()
