"""output_dtype (int8, uint8, binary, ubinary): the vectors as sentence-transformers'
quantize_embeddings gives them, with the ranges of the worker's calibration, on every endpoint."""

import base64
import uuid

import numpy as np
import pytest
from sentence_transformers.quantization import quantize_embeddings

from dispatch.keys import calibration_key
from embeddings import quantize
from embeddings.encoding import vectors_shape
from workers.calibration import CALIBRATION_TEXTS, calibration_store, calibration_texts, calibration_vectors

MODEL = "all-MiniLM-L6-v2"
DTYPES = ("int8", "uint8", "binary", "ubinary")
NP_DTYPES = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


def u(text="text"):
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def calibration(minilm):
    """The model's calibration vectors, embedded once for the module."""
    return calibration_vectors(minilm)


@pytest.fixture(autouse=True)
def _fresh_memo():
    quantize.memo_clear()
    yield
    quantize.memo_clear()


@pytest.fixture
def calibrated(redis_db, minilm, calibration):
    """Redis holds the model's calibration vectors, as a worker leaves them at load."""
    redis_db.set(calibration_key(MODEL, minilm.spec.version), calibration.tobytes())
    return calibration


@pytest.fixture
def api(alice, client_for, drainer):
    return client_for(alice)


def _ranges(calibration, *, dimensions=None, normalize=True):
    shaped = vectors_shape(calibration, dimensions=dimensions, normalize=normalize)
    return np.vstack((shaped.min(axis=0), shaped.max(axis=0)))


def _expected(floats, dtype, ranges):
    return quantize_embeddings(np.asarray(floats, dtype=np.float32), precision=dtype, ranges=ranges)


def _floats(api, texts, **options):
    r = api.post("/v1/embeddings", {"model": MODEL, "input": texts, **options}, format="json")
    assert r.status_code == 200, r.content
    return [d["embedding"] for d in r.json()["data"]]


def test_calibration_texts_are_fixed_and_varied():
    texts = calibration_texts()
    assert texts == calibration_texts() and len(texts) == CALIBRATION_TEXTS
    assert len(set(texts)) > 0.95 * CALIBRATION_TEXTS


def test_a_worker_stores_the_calibration_once(redis_db, minilm, calibration):
    key = calibration_key(MODEL, minilm.spec.version)
    assert calibration_store(minilm, redis_db) is True
    stored = np.frombuffer(redis_db.get(key), dtype="<f4").reshape(-1, minilm.spec.dims)
    np.testing.assert_allclose(stored, calibration, atol=1e-5)
    assert redis_db.ttl(key) == -1  # no TTL
    assert calibration_store(minilm, redis_db) is False


@pytest.mark.parametrize("dtype", DTYPES)
def test_embeddings_match_quantize_embeddings(api, calibrated, dtype):
    texts = [u("a cat"), u("a dog on a mat"), u("stock market")]
    floats = _floats(api, texts)  # embeds them; the quantized answers below are cache hits of the same floats
    r = api.post("/v1/embeddings", {"model": MODEL, "input": texts, "output_dtype": dtype}, format="json")
    assert r.status_code == 200, r.content
    got = np.array([d["embedding"] for d in r.json()["data"]])
    expected = _expected(floats, dtype, _ranges(calibrated))
    assert all(isinstance(x, int) for x in r.json()["data"][0]["embedding"])
    assert got.shape == expected.shape == (3, 384 if dtype.endswith("int8") else 48)
    np.testing.assert_array_equal(got, expected)
    # base64: the same bytes
    r = api.post("/v1/embeddings", {"model": MODEL, "input": texts, "output_dtype": dtype,
                                    "encoding_format": "base64"}, format="json")
    raw = [base64.b64decode(d["embedding"]) for d in r.json()["data"]]
    assert raw == [row.tobytes() for row in expected.astype(NP_DTYPES[dtype])]


@pytest.mark.parametrize("dtype", ["int8", "ubinary"])
def test_with_dimensions_and_without_normalize(api, calibrated, dtype):
    texts = [u("weather today"), u("a recipe for bread")]
    for options, ranges in (({"dimensions": 128}, _ranges(calibrated, dimensions=128)),
                            ({"normalize": False}, _ranges(calibrated, normalize=False))):
        floats = _floats(api, texts, **options)
        r = api.post("/v1/embeddings", {"model": MODEL, "input": texts, "output_dtype": dtype, **options},
                     format="json")
        assert r.status_code == 200, r.content
        got = np.array([d["embedding"] for d in r.json()["data"]])
        np.testing.assert_array_equal(got, _expected(floats, dtype, ranges))
    assert got.shape[1] == (384 if dtype == "int8" else 48)


def test_native_endpoints(api, calibrated):
    text = u("a bird in a tree")
    [floats] = _floats(api, [text], dimensions=64)
    ranges = _ranges(calibrated, dimensions=64)
    one = api.post("/v1/embed", {"text": text, "dimensions": 64, "output_dtype": "uint8"}, format="json").json()
    assert one["embedding"] == _expected([floats], "uint8", ranges)[0].tolist()
    assert one["dimensions"] == 64  # the vector's, not the packed length
    batch = api.post("/v1/embed/batch", {"texts": [text], "dimensions": 64, "output_dtype": "binary",
                                         "encoding_format": "base64"}, format="json").json()
    assert base64.b64decode(batch["embeddings"][0]) == _expected([floats], "binary", ranges)[0].tobytes()
    assert batch["dimensions"] == 64


def test_job_results_take_output_dtype(api, calibrated):
    from tests.embeddings.test_jobs import _wait_job

    texts = [u(f"job text {i}") for i in range(5)]
    job = api.post("/v1/jobs", {"model": MODEL, "texts": texts, "dimensions": 96}, format="json").json()
    _wait_job(api, job["id"])
    floats = [d["embedding"] for d in api.get(f"/v1/jobs/{job['id']}/results").json()["data"]]
    expected = _expected(floats, "int8", _ranges(calibrated, dimensions=96))
    page = api.get(f"/v1/jobs/{job['id']}/results?output_dtype=int8").json()
    np.testing.assert_array_equal(np.array([d["embedding"] for d in page["data"]]), expected)
    stream = api.get(f"/v1/jobs/{job['id']}/results?format=jsonl&output_dtype=ubinary&encoding_format=base64")
    lines = b"".join(stream.streaming_content).splitlines()
    import orjson

    got = [base64.b64decode(orjson.loads(line)["embedding"]) for line in lines]
    assert got == [row.tobytes() for row in _expected(floats, "ubinary", None)]


def test_int8_without_calibration_is_503_naming_the_model(api):
    r = api.post("/v1/embeddings", {"model": MODEL, "input": u(), "output_dtype": "int8"}, format="json")
    assert r.status_code == 503, r.content
    assert MODEL in r.json()["error"]["message"] and r["Retry-After"]
    # binary needs none
    r = api.post("/v1/embed", {"text": u(), "output_dtype": "ubinary"}, format="json")
    assert r.status_code == 200 and len(r.json()["embedding"]) == 48


def test_bad_output_dtype_is_400(api, calibrated):
    r = api.post("/v1/embeddings", {"model": MODEL, "input": u(), "output_dtype": "int4"}, format="json")
    assert r.status_code == 400 and r.json()["error"]["param"] == "output_dtype"
    r = api.post("/v1/embeddings", {"model": "someprovider/some-model", "input": u(), "output_dtype": "uint8"},
                 format="json")
    assert r.status_code == 400 and r.json()["error"]["param"] == "output_dtype"
