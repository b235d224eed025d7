"""The model runtime's backends: ONNX Runtime (the CPU default) and the bfloat16 passes must give
torch's float32 vectors."""

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
    tokens, vectors = minilm.encode(TEXTS, max_texts=1)  # passes of one text: ONNX Runtime even with bfloat16 on
    reference = minilm.model.encode(TEXTS)  # sentence-transformers' own torch path
    assert _cos(vectors, reference).min() > 0.9999
    assert tokens[2] == 256 and tokens[3] < 5


def test_the_torch_backend_gives_the_same_vectors(minilm, tmp_path):
    from workers.runtime import ModelRuntime

    torch_runtime = ModelRuntime(minilm.spec, "cpu", backend="torch", precision="fp32")
    assert torch_runtime.backend == "torch" and torch_runtime._bf16 is None
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

    runtime = ModelRuntime(tiny_model, "cpu", onnx_dir=tmp_path, precision="fp32")
    assert runtime.backend == "onnx"
    (exported,) = tmp_path.glob("tiny-bert-*.onnx")
    _, vectors = runtime.encode(TEXTS)
    assert vectors.shape == (4, 48)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.9999
    # A second runtime loads the same file instead of exporting again.
    stamp = exported.stat().st_mtime_ns
    assert ModelRuntime(tiny_model, "cpu", onnx_dir=tmp_path, precision="fp32").backend == "onnx"
    assert exported.stat().st_mtime_ns == stamp


def test_a_model_onnx_cannot_serve_stays_on_torch(tiny_model, tmp_path, monkeypatch):
    """A broken export (here: any file that is not a model) costs speed, never correctness."""
    from workers import backends
    from workers.runtime import ModelRuntime

    def broken(spec, inputs, onnx_dir):
        path = tmp_path / "broken.onnx"
        path.write_bytes(b"not a model")
        return path

    monkeypatch.setattr(backends, "onnx_export_cached", broken)
    runtime = ModelRuntime(tiny_model, "cpu", precision="fp32")
    assert runtime.backend == "torch"
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.9999


# --- bfloat16 passes (DECISIONS #21) ----------------------------------------------------------

class _Counting:
    """Wraps a backend (the ONNX session or the bfloat16 transformer) and counts its passes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.inner.run(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture(scope="module")
def minilm_bf16(minilm):
    """bfloat16 passes forced on (they run without AMX too, only slower): the path AMX CPUs take."""
    from workers.runtime import ModelRuntime

    runtime = ModelRuntime(minilm.spec, "cpu", precision="bf16")
    assert runtime._bf16 is not None and runtime.backend == "onnx"
    return runtime


def test_with_bfloat16_big_passes_have_no_session_of_their_own(minilm_bf16):
    assert minilm_bf16._session_big is None and minilm_bf16.parallel_passes == 1  # all the cores: one at a time


@pytest.mark.parametrize(("isa", "bf16", "loops"), [("", False, 2), ("avx512", True, 2), ("amx", True, 1)])
def test_auto_precision_and_the_passes_run_side_by_side_follow_the_cpu(minilm, monkeypatch, isa, bf16, loops):
    """bfloat16 where the CPU has bfloat16 instructions; big passes on part of the cores run two
    at once, except bfloat16 ones on AMX (DECISIONS #21-#23)."""
    import torch

    from workers import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_bf16", lambda: isa)
    before = torch.get_num_threads()
    try:
        runtime = runtime_module.ModelRuntime(minilm.spec, "cpu", threads=1, onnx_threads=2, precision="auto")
    finally:
        torch.set_num_threads(before)
    assert (runtime._bf16 is not None) is bf16 and (runtime._session_big is None) is bf16
    assert runtime.parallel_passes == loops
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, minilm.model.encode(TEXTS)).min() > 0.9999


def test_passes_of_three_texts_or_more_run_in_bfloat16_smaller_ones_on_onnx_runtime(minilm_bf16, monkeypatch):
    from workers.runtime import BIG_PASS_TEXTS

    onnx, bf16 = _Counting(minilm_bf16._session), _Counting(minilm_bf16._bf16)
    monkeypatch.setattr(minilm_bf16.small, "session", onnx)
    monkeypatch.setattr(minilm_bf16.big, "graph", bf16)
    minilm_bf16.encode(TEXTS[:BIG_PASS_TEXTS - 1])
    assert (onnx.calls, bf16.calls) == (1, 0)
    minilm_bf16.encode(TEXTS[:BIG_PASS_TEXTS])
    assert (onnx.calls, bf16.calls) == (1, 1)


def test_bfloat16_passes_match_sentence_transformers_float32(minilm_bf16):
    texts = TEXTS + [f"sentence number {i} about embeddings and caches" for i in range(28)]
    tokens, vectors = minilm_bf16.encode(texts)
    reference = minilm_bf16.model.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (32, 384)
    assert _cos(vectors, reference).min() > 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the model's Normalize ran in float32
    assert tokens[2] == 256


def test_bfloat16_passes_run_one_frozen_torchscript_graph(minilm_bf16):
    import torch

    assert isinstance(minilm_bf16._bf16, torch.jit.ScriptModule)


def test_a_model_tracing_cannot_serve_runs_its_bfloat16_passes_eagerly(minilm, monkeypatch):
    import torch

    from workers.runtime import ModelRuntime

    def refuse(*args, **kwargs):
        raise RuntimeError("this model cannot be traced")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    runtime = ModelRuntime(minilm.spec, "cpu", precision="bf16")
    assert runtime._bf16 is not None and not isinstance(runtime._bf16, torch.jit.ScriptModule)
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.9999


def test_precision_fp32_keeps_every_pass_in_float32(minilm):
    from workers.runtime import ModelRuntime

    runtime = ModelRuntime(minilm.spec, "cpu", precision="fp32")
    assert runtime._bf16 is None
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.99999


def test_a_model_bfloat16_cannot_reproduce_stays_in_float32(minilm, monkeypatch):
    from workers import backends
    from workers.runtime import ModelRuntime

    real = backends.cosine_to_float32
    monkeypatch.setattr(backends, "cosine_to_float32",
                        lambda reference, candidate, pad: 0.99 if candidate.name == "bf16"
                        else real(reference, candidate, pad))
    runtime = ModelRuntime(minilm.spec, "cpu", precision="bf16")
    assert runtime._bf16 is None and runtime.backend == "onnx"
    _, vectors = runtime.encode(TEXTS)
    assert _cos(vectors, runtime.model.encode(TEXTS)).min() > 0.99999


def test_an_unknown_precision_is_refused(minilm):
    from workers.runtime import ModelRuntime

    with pytest.raises(ValueError, match="EMBED_PRECISION"):
        ModelRuntime(minilm.spec, "cpu", precision="fp8")


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "amx"),
                                               ("fpu avx2 avx512f avx512_bf16", "avx512"), ("fpu avx2 fma", "")])
def test_bfloat16_instructions_are_read_from_the_cpu_flags(tmp_path, flags, expected):
    from workers.runtime import cpu_bf16

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_bf16(str(info)) == expected
    assert cpu_bf16(str(tmp_path / "missing")) == ""


def test_a_cpu_worker_gives_big_passes_half_the_cores_and_small_passes_all_unless_told(monkeypatch):
    from workers import devices

    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    assert devices.cpu_threads(0) == (1, 2)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert devices.cpu_threads(0) == (8, 16)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0})
    assert devices.cpu_threads(0) == (1, 1)
    assert devices.cpu_threads(3) == (3, 3)


def test_without_bfloat16_big_passes_run_on_an_onnx_session_of_their_own_with_fewer_threads(minilm, monkeypatch):
    import torch

    from workers.runtime import BIG_PASS_TEXTS, ModelRuntime

    before = torch.get_num_threads()
    try:
        runtime = ModelRuntime(minilm.spec, "cpu", threads=1, onnx_threads=2, precision="fp32")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert runtime._bf16 is None and runtime.parallel_passes == 2  # the worker runs two drain loops
    assert runtime._session.get_session_options().intra_op_num_threads == 2
    assert runtime._session_big.get_session_options().intra_op_num_threads == 1
    small, big = _Counting(runtime._session), _Counting(runtime._session_big)
    monkeypatch.setattr(runtime.small, "session", small)
    monkeypatch.setattr(runtime.big, "session", big)
    _, one = runtime.encode(TEXTS[:BIG_PASS_TEXTS - 1])
    assert (small.calls, big.calls) == (1, 0)
    _, many = runtime.encode(TEXTS)
    assert (small.calls, big.calls) == (1, 1)
    reference = minilm.model.encode(TEXTS)
    assert _cos(many, reference).min() > 0.9999 and _cos(one, reference[:BIG_PASS_TEXTS - 1]).min() > 0.9999


def test_one_thread_count_for_all_passes_means_one_session(minilm):
    from workers.runtime import ModelRuntime

    runtime = ModelRuntime(minilm.spec, "cpu", threads=2, onnx_threads=2, precision="fp32")
    assert runtime._session_big is None and runtime.parallel_passes == 1
