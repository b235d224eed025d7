"""The drain loop, one step at a time and under concurrent load, on the real model."""

import threading
import time
import uuid

import numpy as np
import pytest
from django.db import connections

from dispatch import local
from dispatch.keys import reply_key
from embeddings.cache import cache_lookup, cache_upsert, text_key
from embeddings.registry import model_get
from tests import handoff
from tests.helpers import poll_until
from workers.drain import Drainer

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def loop(transactional_db, redis_db, minilm):
    drainer = Drainer(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                      name="step")
    drainer.heartbeat(force=True)  # the API refuses work for a model with no live worker
    return drainer


def _submit(texts, scope=1, wait=30.0):
    return handoff.work_submit(model=MODEL, texts=texts, keys=[text_key(t) for t in texts], scope=scope, wait=wait)


def test_one_step_drains_many_waiting_requests_into_one_pass(loop, minilm):
    items = [_submit([f"request {i} {uuid.uuid4().hex[:6]}"]) for i in range(20)]
    assert loop.run_once(block=0.1) == 20
    assert loop.stats.batches == 1 and loop.stats.batch_items == [20]
    for item in items:
        tokens, vectors = local.work_wait(item, wait=1, dims=384)
        ref = minilm.model.encode(item.texts)[0]
        assert float(np.dot(vectors[0], ref)) > 0.999 and tokens[0] > 2


def test_a_step_stops_at_max_batch_texts(loop):
    for i in range(100):
        _submit([f"t{i}"])
    assert loop.run_once(block=0.1) == 64
    assert loop.run_once(block=0.1) == 36


def test_the_same_text_from_two_requests_is_embedded_once_and_stored_per_scope(loop):
    text = f"shared {uuid.uuid4().hex}"
    a, b = _submit([text], scope=1), _submit([text, "other"], scope=2)
    assert loop.run_once(block=0.1) == 2  # two unique texts
    va = local.work_wait(a, wait=1, dims=384)[1][0]
    vb = local.work_wait(b, wait=1, dims=384)[1][0]
    np.testing.assert_array_equal(va, vb)
    key = text_key(text)
    assert key in cache_lookup(model=MODEL, version=loop.runtimes[MODEL].spec.version, keys=[key], scopes=[1])
    assert key in cache_lookup(model=MODEL, version=loop.runtimes[MODEL].spec.version, keys=[key], scopes=[2])


def test_expired_requests_are_dropped_unanswered(loop, redis_db):
    item = _submit(["nobody waits"], wait=0.01)
    poll_until(lambda: time.time() > item.deadline, timeout=1, interval=0.005, message="the item's deadline to pass")
    assert loop.run_once(block=0.1) == 0
    assert redis_db.llen(reply_key(item.id)) == 0


def test_a_failing_batch_is_retried_item_by_item(loop, monkeypatch):
    runtime = loop.runtimes[MODEL]
    real = runtime.encode

    def flaky(texts, **kw):
        if any("poison" in t for t in texts):
            raise RuntimeError("cannot embed poison")
        return real(texts, **kw)

    monkeypatch.setattr(runtime, "encode", flaky)
    good, bad = _submit(["fine text"]), _submit(["poison"])
    assert loop.run_once(block=0.1) == 1
    assert local.work_wait(good, wait=1, dims=384)[1].shape == (1, 384)
    from embedplatform.errors import InvalidInput

    with pytest.raises(InvalidInput, match="cannot embed poison"):
        local.work_wait(bad, wait=1, dims=384)


def test_a_full_queue_is_refused_with_503_semantics(loop, settings):
    from embedplatform.errors import Overloaded

    settings.MAX_QUEUE_DEPTH = 2
    _submit(["one"]), _submit(["two"])
    with pytest.raises(Overloaded, match="queue is full"):
        _submit(["three"])


def test_under_concurrent_load_batches_hold_many_requests(drainer):
    """32 clients sending one text each, as fast as they can: batches must fill."""
    errors = []

    def client(n):
        try:
            for j in range(6):
                t = f"client {n} text {j} {uuid.uuid4().hex[:6]}"
                item = _submit([t])
                local.work_wait(item, wait=20, dims=384)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    stats = drainer.stats
    assert stats.items == 32 * 6
    assert stats.items / stats.batches >= 4, stats.batch_items
    assert max(stats.batch_items) >= 16, stats.batch_items


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def minilm_split(request):
    """A runtime whose big passes run on one thread, two at once: on their own ONNX Runtime
    session (a CPU without bfloat16) or in bfloat16 (AVX512-BF16, DECISIONS #23). The worker runs
    two drain loops on it."""
    import torch

    from workers import runtime as runtime_module

    before = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runtime_module, "cpu_bf16", lambda: "avx512")
            runtime = runtime_module.ModelRuntime(model_get(MODEL), "cpu", threads=1, onnx_threads=2,
                                                  precision=request.param)
    finally:
        torch.set_num_threads(before)
    assert runtime.parallel_passes == 2 and (runtime._bf16 is not None) == (request.param == "bf16")
    return runtime


def test_two_drain_loops_on_one_runtime_answer_every_request_right(transactional_db, redis_db, minilm_split):
    loops = [Drainer(runtimes={MODEL: minilm_split}, redis=redis_db, max_texts=64, max_tokens=16384,
                     upsert=cache_upsert, name=f"pair-{i}", block=0.1) for i in range(2)]
    loops[0].heartbeat(force=True)
    threads = [loop.start(on_exit=connections.close_all) for loop in loops]
    answers, failures = {}, []

    def client(n):
        for j in range(6):
            texts = [f"client {n} request {j} {uuid.uuid4().hex[:8]}"] * (1 + j % 2) + [f"extra {n} {j}"]
            try:
                answers[(n, j)] = (texts, local.work_wait(_submit(texts), wait=30, dims=384)[1])
            except Exception as exc:
                failures.append(repr(exc))

    try:
        clients = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=120)
    finally:
        for loop in loops:
            loop.stop()
        for t in threads:
            t.join(timeout=10)
    assert not failures, failures[:3]
    assert len(answers) == 72
    for texts, vectors in answers.values():
        reference = minilm_split.model.encode(texts)
        assert vectors.shape == (len(texts), 384)
        assert (np.sum(vectors * reference, axis=1) > 0.9999).all()  # each text's own vector, in order
    assert all(loop.stats.texts > 0 for loop in loops), [loop.stats.texts for loop in loops]
