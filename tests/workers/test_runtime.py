"""The model runtime's two backends: ONNX Runtime (the CPU default) must give torch's vectors."""

import shutil

import numpy as np
import pytest

from embeddings.registry import ModelSpec

TEXTS = [
    "a cat sat on the mat",
    "naïve café, 東京, emoji 🚀 and a NUL\x00 byte",
    "word " * 400,  # truncated to max_tokens
    "x",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_cpu_default_is_onnx_runtime_and_it_matches_sentence_transformers(minilm):
    assert minilm.backend == "onnx"
    tokens, vectors = minilm.encode(TEXTS)
    reference = minilm.model.encode(TEXTS)  # sentence-transformers' own torch path
    assert _cos(vectors, reference).min() > 0.9999
    assert tokens[2] == 256 and tokens[3] < 5


def test_the_torch_backend_gives_the_same_vectors(minilm, tmp_path):
    from workers.runtime import ModelRuntime

    torch_runtime = ModelRuntime(minilm.spec, "cpu", backend="torch")
    assert torch_runtime.backend == "torch"
    _, a = torch_runtime.encode(TEXTS)
    _, b = minilm.encode(TEXTS)
    assert _cos(a, b).min() > 0.9999


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm):
    """A random 2-layer BERT with mean pooling and no normalization: another model, other dims."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    bert = root / "bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=96, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert)
    minilm.tokenizer.save_pretrained(bert)
    model = SentenceTransformer(modules=[Transformer(str(bert), max_seq_length=64), Pooling(48, "mean")], device="cpu")
    out = root / "st"
    model.save(str(out))
    shutil.rmtree(bert)
    return ModelSpec(name="tiny-bert", path=str(out), dims=48, max_tokens=64, version="t1", normalize=False)


def test_another_model_is_exported_cached_and_matches_torch(tiny_model, tmp_path):
    from workers.runtime import ModelRuntime

    runtime = ModelRuntime(tiny_model, "cpu", onnx_dir=tmp_path)
    assert runtime.backend == "onnx"
    (exported,) = tmp_path.glob("tiny-bert-*.onnx")
    _, vectors = runtime.encode(TEXTS)
    assert vectors.shape == (4, 48)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.9999
    # A second runtime loads the same file instead of exporting again.
    stamp = exported.stat().st_mtime_ns
    assert ModelRuntime(tiny_model, "cpu", onnx_dir=tmp_path).backend == "onnx"
    assert exported.stat().st_mtime_ns == stamp


def test_a_model_onnx_cannot_serve_stays_on_torch(tiny_model, tmp_path, monkeypatch):
    """A broken export (here: any file that is not a model) costs speed, never correctness."""
    from workers import runtime as runtime_module

    def broken(self, onnx_dir):
        path = tmp_path / "broken.onnx"
        path.write_bytes(b"not a model")
        return path

    monkeypatch.setattr(runtime_module.ModelRuntime, "_onnx_export", broken)
    runtime = runtime_module.ModelRuntime(tiny_model, "cpu")
    assert runtime.backend == "torch"
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.9999
