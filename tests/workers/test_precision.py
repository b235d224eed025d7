"""Per-model precision: int8 by ONNX Runtime's dynamic quantization, and the load check that keeps
a model in float32 where a reduced precision strays from it (workers/backends.py, DECISIONS #39)."""

import json
import logging

import numpy as np
import pytest

from workers.backends import SAMPLE_TEXTS

TEXTS = ["a cat sat on the mat", "naïve café, 東京, emoji 🚀", "word " * 400, *SAMPLE_TEXTS[::7]]
REPEATED = 2  # the index of "word word ..."


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def int8(minilm):
    from workers.runtime import ModelRuntime

    return ModelRuntime(minilm.spec, "cpu", precision="int8", threads=1, onnx_threads=2)


def test_int8_serves_every_pass_close_to_float32_and_says_so(int8, minilm):
    assert int8.precision == "int8" and int8.backend == "onnx"
    assert int8.big.precision == "int8" and int8._bf16 is None  # no bfloat16 big passes then
    assert "int8" in int8.small.path.name and int8.small.path.exists()
    checked = int8.precision_checked
    assert checked is not None and checked["min_cosine"] >= 0.99 and checked["neighbour_overlap"] >= 0.9
    for max_texts in (1, 64):  # small passes and big passes
        _, vectors = int8.encode(TEXTS, max_texts=max_texts)
        cosines = _cos(vectors, minilm.model.encode(TEXTS))
        assert np.delete(cosines, REPEATED).min() >= 0.99
        # 256 tokens of one repeated word stray most: 0.99+ with VNNI, 0.9896 on an AVX2 EPYC with
        # the 7-bit weights (0.978 with 8-bit ones: saturation, backends.cpu_int8_dot).
        assert cosines[REPEATED] >= 0.985
    # A one-letter text strays most (0.996 alone, 0.99 padded beside a long text): int8 is close, not the same vectors.
    _, vectors = int8.encode(["x"])
    assert _cos(vectors, minilm.model.encode(["x"])).min() >= 0.98


def test_a_precision_short_of_the_thresholds_stays_in_float32_and_says_why(minilm, settings, caplog):
    from workers.runtime import ModelRuntime

    settings.EMBED_MIN_COSINE = 1.0  # no quantized model reaches it
    with caplog.at_level(logging.WARNING, logger="workers.backends"):
        runtime = ModelRuntime(minilm.spec, "cpu", precision="int8")
    assert runtime.precision == "fp32" and runtime.backend == "onnx" and runtime.precision_checked is None
    assert "int8" not in runtime.small.path.name
    assert any("stays in float32: int8" in r.getMessage() and "EMBED_MIN_COSINE" in r.getMessage()
               for r in caplog.records)

    settings.EMBED_MIN_COSINE, settings.EMBED_MIN_NEIGHBOUR_OVERLAP = 0.5, 1.01
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workers.backends"):
        runtime = ModelRuntime(minilm.spec, "cpu", precision="int8")
    assert runtime.precision == "fp32"
    assert any("neighbour overlap" in r.getMessage() for r in caplog.records)


def test_fp16_on_a_cpu_runs_float32_with_a_log_line(minilm, caplog):
    from workers.runtime import ModelRuntime

    with caplog.at_level(logging.WARNING, logger="workers.backends"):
        runtime = ModelRuntime(minilm.spec, "cpu", precision="fp16")
    assert runtime.precision.startswith("fp32") and "fp16" not in runtime.precision
    assert any("fp16 runs on a GPU only" in r.getMessage() for r in caplog.records)


def test_int8_is_refused_on_torch(minilm):
    from workers.runtime import ModelRuntime

    with pytest.raises(ValueError, match="int8"):
        ModelRuntime(minilm.spec, "cpu", backend="torch", precision="int8")


def test_the_neighbour_overlap_counts_shared_top_neighbours():
    from workers.backends import neighbour_overlap

    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 8))
    assert neighbour_overlap(a, a) == 1.0
    assert neighbour_overlap(a, rng.normal(size=(30, 8))) < 0.6


def test_each_model_s_precision_and_backend_reach_its_runtime(settings, monkeypatch):
    """EMBED_MODELS' per-model values win; `auto` takes the worker's EMBED_PRECISION/EMBED_BACKEND."""
    from embeddings.registry import _load, model_specs
    from workers import bootsteps

    minilm_path = model_specs()["all-MiniLM-L6-v2"].path
    settings.EMBED_MODELS = json.dumps({"a": {"path": minilm_path, "precision": "int8", "backend": "onnx"},
                                        "b": {"path": minilm_path}})
    settings.EMBED_PRECISION, settings.EMBED_BACKEND = "fp32", "torch"
    made = {}
    monkeypatch.setattr(bootsteps, "ModelRuntime", lambda spec, device, **kw: made.setdefault(spec.name, kw))
    try:
        specs = model_specs()
        assert (specs["a"].precision, specs["a"].backend, specs["b"].precision) == ("int8", "onnx", "auto")
        for name in ("a", "b"):
            bootsteps.runtime_load(specs[name], "cpu", 2, 4)
        assert made["a"] == {"threads": 2, "backend": "onnx", "precision": "int8", "onnx_threads": 4}
        assert (made["b"]["backend"], made["b"]["precision"]) == ("torch", "fp32")
        bootsteps.runtime_load(specs["b"], "cuda:0", 0, 0)  # a GPU runs torch whatever is asked
    finally:
        _load.cache_clear()


def test_an_unknown_precision_in_embed_models_is_refused(settings):
    from django.core.exceptions import ImproperlyConfigured

    from embeddings.registry import _load, model_specs

    path = model_specs()["all-MiniLM-L6-v2"].path
    settings.EMBED_MODELS = json.dumps({"a": {"path": path, "precision": "int4"}})
    try:
        with pytest.raises(ImproperlyConfigured, match="precision"):
            model_specs()
    finally:
        _load.cache_clear()


def test_the_heartbeat_publishes_the_chosen_precision(int8, minilm):
    """What GET /v1/models/{id} shows: the runtime's own statement, int8 included."""
    from workers.drain import serving_info

    assert serving_info(int8) == {"backend": "onnx", "precision": "int8", "device": "cpu"}
    assert serving_info(minilm)["precision"] == minilm.precision


def test_int8_weights_are_7_bits_where_the_cpu_has_no_8_bit_dot_products(tmp_path, int8):
    from workers.backends import cpu_int8_dot

    # The served file is this CPU's recipe: `-w7` (7-bit weights) exactly where it has no VNNI.
    assert int8.small.path.name.endswith(".int8-pc-sq65-w7.onnx") is (not cpu_int8_dot())

    flags = "flags\t\t: fpu sse2 avx2 fma {}\n"
    for extra, has in (("", False), ("avx512_vnni avx512f", True), ("avx_vnni", True), ("amx_int8", True)):
        (tmp_path / "cpuinfo").write_text("processor\t: 0\n" + flags.format(extra))
        assert cpu_int8_dot(str(tmp_path / "cpuinfo")) is has
    assert cpu_int8_dot(str(tmp_path / "missing")) is False
