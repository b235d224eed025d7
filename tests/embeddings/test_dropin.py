"""What clients written for OpenAI send, taken as they send it: cl100k_base token-id arrays in
/v1/embeddings, OpenAI's model names as aliases of served models (EMBED_MODEL_ALIASES), `input`
for `texts`, bodies without a Content-Type; and what they read: `x-should-retry: false` on a quota
429, the job's own texts in its 202's headers, job results as base64, where the API lives.

Real PostgreSQL, Redis and (where vectors are compared) a real drain loop on the real model. The
clients themselves run against the live server in tests/test_clients_live.py.
"""

from __future__ import annotations

import base64
import hashlib
import uuid

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from embeddings import tokenids
from embeddings.checks import model_aliases_check
from embeddings.models import Job
from embeddings.registry import DEFAULT_MODEL, OPENAI_MODEL_NAMES, model_aliases, model_get
from embedplatform.errors import MODEL_UNKNOWN
from tests.embeddings.test_jobs import _wait_job
from tests.helpers import tier_limit

MODEL = DEFAULT_MODEL


def u(text: str = "text") -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def _error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def _vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.content
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def ids(text: str) -> list[int]:
    return tokenids.cl100k_base().encode(text)


@pytest.fixture
def api(alice, client_for, drainer):
    return client_for(alice)


@pytest.fixture
def api_no_worker(alice, client_for, redis_db):
    return client_for(alice)


# --- cl100k_base, shipped ----------------------------------------------------------------------

def test_the_encoding_is_tiktokens_cl100k_base_from_the_shipped_file():
    data = tokenids._bpe_file()
    assert hashlib.sha256(data).hexdigest() == tokenids.CL100K_SHA256
    enc = tokenids.cl100k_base()
    assert enc.name == "cl100k_base" and enc.n_vocab == 100277
    assert enc.encode("hello world") == [15339, 1917]  # the ids OpenAI's tokenizer gives
    text = "Ünïcödé, emoji 😀 and CJK 漢字 survive the round trip."
    assert tokenids.tokens_decode(enc.encode(text)) == text
    assert tokenids.tokens_decode([100257]) == "<|endoftext|>"
    # an array cut inside a character (a client's chunking can) decodes what it can
    assert tokenids.tokens_decode(enc.encode("😀")[:1]) == "\ufffd"


@pytest.mark.parametrize(("tokens", "position", "fragment"), [
    ([1, 2, 100256], 2, "is 100256, not a cl100k_base token id"),
    ([100261], 0, "is 100261, not a cl100k_base token id"),
    ([5, -1], 1, "is -1, not"),
    ([5, 2**40], 1, f"is {2**40}, not"),
    ([5, True], 1, "is true: a token array holds integers"),
    ([5, 1.5], 1, "is 1.5: a token array holds integers"),
    ([5, "6"], 1, "is '6': a token array holds integers"),
    ([5, None], 1, "is null: a token array holds integers"),
])
def test_a_bad_token_id_is_named_with_its_position(tokens, position, fragment):
    with pytest.raises(tokenids.TokenIdError) as bad:
        tokenids.token_ids_check(tokens)
    assert bad.value.position == position
    assert fragment in bad.value.describe(f"input[0][{position}]")


# --- token arrays through /v1/embeddings ----------------------------------------------------------

def test_token_arrays_embed_as_the_text_they_stand_for(api):
    texts = [u("a cat on a mat"), u("ünïcödé 😀 text"), u("a third one")]
    want = _vectors(api.post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json"))
    nested = api.post("/v1/embeddings", {"model": MODEL, "input": [ids(t) for t in texts]}, format="json")
    np.testing.assert_array_equal(_vectors(nested), want)
    assert all(d["cached"] for d in nested.json()["data"])  # the same text: the same cache entries
    flat = api.post("/v1/embeddings", {"model": MODEL, "input": ids(texts[1])}, format="json")
    np.testing.assert_array_equal(_vectors(flat), want[1:2])
    mixed = api.post("/v1/embeddings", {"model": MODEL, "input": [texts[0], ids(texts[2])]}, format="json")
    np.testing.assert_array_equal(_vectors(mixed), want[[0, 2]])
    usage = nested.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0  # counted by the model's tokenizer


def test_token_arrays_take_base64_and_the_other_options(api):
    text = u("options apply after decoding")
    plain = api.post("/v1/embeddings", {"model": MODEL, "input": text, "dimensions": 64}, format="json")
    tokens = api.post("/v1/embeddings", {"model": MODEL, "input": [ids(text)], "dimensions": 64,
                                         "encoding_format": "base64"}, format="json")
    assert tokens.status_code == 200, tokens.content
    got = np.frombuffer(base64.b64decode(tokens.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(got, _vectors(plain)[0])


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "message"), [
    ([[15339, 1917], [1, 100256]], "input: input[1][1] is 100256, not a cl100k_base token id"),
    ([15339, -3], "input: input[1] is -3, not a cl100k_base token id"),
    ([15339, "world"], "input: input[1] is 'world': a token array holds integers"),
    ([[15339], []], "input: input[1] is an empty token array"),
    (["text", 15339], "input: input[1] is an integer among texts"),
    ([[15339, False]], "input: input[0][1] is false: a token array holds integers"),
])
def test_bad_token_arrays_are_400_naming_the_position(api_no_worker, value, message):
    error = _error(api_no_worker.post("/v1/embeddings", {"model": MODEL, "input": value}, format="json"))
    assert error["param"] == "input" and error["code"] == "invalid_value"
    assert error["message"].startswith(message), error["message"]


@pytest.mark.django_db
def test_a_token_array_decoding_past_the_character_limit_is_400(api_no_worker, settings):
    settings.MAX_INPUT_CHARS = 10
    error = _error(api_no_worker.post("/v1/embeddings", {"model": MODEL, "input": [ids("a" * 40)]}, format="json"))
    assert error["message"].startswith("input: input[0] (decoded) has 40 characters; the limit is 10")


@pytest.mark.django_db
def test_the_native_endpoints_still_take_text_only(api_no_worker):
    error = _error(api_no_worker.post("/v1/embed/batch", {"texts": [[15339, 1917]]}, format="json"))
    assert "is a token array; send text" in error["message"]


# --- aliases ---------------------------------------------------------------------------------------

def test_openai_model_names_stand_for_the_default_model_unless_configured(settings):
    settings.EMBED_MODEL_ALIASES = None  # unset
    assert model_aliases() == dict.fromkeys(OPENAI_MODEL_NAMES, DEFAULT_MODEL)
    assert model_get("text-embedding-ada-002") is model_get(DEFAULT_MODEL)
    settings.EMBED_MODEL_ALIASES = ""  # set empty: none
    assert model_aliases() == {} and model_get("text-embedding-ada-002") is None
    settings.EMBED_MODEL_ALIASES = f"small={MODEL}, minilm = {MODEL} ,"
    assert model_aliases() == {"small": MODEL, "minilm": MODEL}
    settings.EMBED_MODEL_ALIASES = f'{{"text-embedding-3-small": "{MODEL}"}}'
    assert model_aliases() == {"text-embedding-3-small": MODEL}
    settings.EMBED_MODEL_ALIASES = None
    settings.EMBED_MODELS = '{"other": {"path": "/nowhere", "dims": 8, "max_tokens": 16}}'
    assert model_aliases() == {}  # the default model is not served: no default aliases


@pytest.mark.parametrize(("raw", "fragment"), [
    ("small=nope", "'small' stands for 'nope', which EMBED_MODELS does not serve (it serves: all-MiniLM-L6-v2)"),
    (f"{MODEL}={MODEL}", f"'{MODEL}' is a model of EMBED_MODELS, not an alias"),
    (f"openai/x={MODEL}", "may not contain '/'"),
    ("small", "'small' is not alias=model"),
    (f"={MODEL}", f"'={MODEL}' is not alias=model"),
    ('{"small": 3}', 'must map names to model names'),
    ('{"small": ', "not valid JSON"),
])
def test_a_bad_alias_stops_the_start_with_its_reason(settings, raw, fragment):
    settings.EMBED_MODEL_ALIASES = raw
    with pytest.raises(ImproperlyConfigured, match="EMBED_MODEL_ALIASES") as bad:
        model_aliases()
    assert fragment in str(bad.value)
    [error] = model_aliases_check(None)
    assert error.id == "embeddings.E001" and fragment in error.msg
    with pytest.raises(SystemCheckError, match=r"embeddings\.E001"):
        call_command("check")


def test_an_alias_embeds_with_its_model_and_answers_its_models_name(api):
    texts = [u("aliases share the model's cache"), u("and its vectors")]
    want = _vectors(api.post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json"))
    for alias in OPENAI_MODEL_NAMES:
        r = api.post("/v1/embeddings", {"model": alias, "input": texts}, format="json")
        np.testing.assert_array_equal(_vectors(r), want)
        assert r.json()["model"] == MODEL  # the model that computed them (DECISIONS #45)
        assert all(d["cached"] for d in r.json()["data"])
    one = api.post("/v1/embed", {"text": texts[0], "model": "text-embedding-3-small"}, format="json").json()
    assert one["model"] == MODEL and np.allclose(one["embedding"], want[0])


@pytest.mark.django_db
def test_a_job_by_alias_is_the_models_job(api_no_worker):
    created = api_no_worker.post("/v1/jobs", {"model": "text-embedding-3-large", "texts": ["a", "b"]}, format="json")
    assert created.status_code == 202, created.content
    assert created.json()["model"] == MODEL and Job.objects.get(pk=created.json()["id"]).model == MODEL


@pytest.mark.django_db
def test_the_models_list_shows_each_alias_with_the_model_it_stands_for(api_no_worker, settings):
    settings.EMBED_MODEL_ALIASES = f"text-embedding-3-small={MODEL},text-embedding-ada-002={MODEL}"
    data = api_no_worker.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL, "text-embedding-3-small", "text-embedding-ada-002"]
    model, small, _ = data
    assert model["alias_of"] is None
    assert small == model | {"id": "text-embedding-3-small", "alias_of": MODEL}
    detail = api_no_worker.get("/v1/models/text-embedding-3-small")
    assert detail.status_code == 200, detail.content
    body = detail.json()
    assert (body["id"], body["alias_of"], body["dimensions"], body["queue_depth"]) == (
        "text-embedding-3-small", MODEL, 384, 0)
    settings.EMBED_MODEL_ALIASES = ""
    assert _error(api_no_worker.get("/v1/models/text-embedding-3-small"), 404)["code"] == "model_not_found"
    error = _error(api_no_worker.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                                      format="json"), 404)
    assert error["message"] == MODEL_UNKNOWN.format(model="text-embedding-3-small")


@pytest.mark.django_db
def test_an_alias_is_allowed_where_its_model_is(alice, bob, charlie, client_for, redis_db):
    tier_limit(alice, allowed_models=[MODEL])
    created = client_for(alice).post("/v1/jobs", {"model": "text-embedding-3-small", "texts": ["a"]}, format="json")
    assert created.status_code == 202, created.content
    tier_limit(bob, allowed_models=["some-other-model"])
    error = _error(client_for(bob).post("/v1/jobs", {"model": "text-embedding-3-small", "texts": ["a"]},
                                        format="json"), 403)
    assert "text-embedding-3-small" in error["message"]
    # a free tenant's tier has no server compute, whatever the model is called
    error = _error(client_for(charlie).post("/v1/embeddings", {"model": "text-embedding-ada-002", "input": "a"},
                                            format="json"), 403)
    assert "configure a provider" in error["message"]


# --- small things clients trip on -----------------------------------------------------------------

def test_a_quota_429_says_do_not_retry_and_a_rate_limit_429_does_not(alice, client_for, drainer):
    tier_limit(alice, daily_limit=2)
    client = client_for(alice)
    assert client.post("/v1/embeddings", {"model": MODEL, "input": ["a", "b"]}, format="json").status_code == 200
    refused = client.post("/v1/embeddings", {"model": MODEL, "input": "c"}, format="json")
    assert _error(refused, 429)["code"] == "quota_exceeded"
    assert refused["x-should-retry"] == "false" and int(refused["Retry-After"]) > 0
    job = client.post("/v1/jobs", {"model": MODEL, "texts": ["d"]}, format="json")
    assert _error(job, 429)["code"] == "quota_exceeded" and job["x-should-retry"] == "false"


@pytest.mark.django_db
def test_a_per_minute_429_leaves_retrying_to_the_client(bob, client_for, redis_db):
    tier_limit(bob, requests_per_minute=1)
    client = client_for(bob)
    assert client.get("/v1/jobs").status_code == 200
    limited = client.get("/v1/jobs")
    assert _error(limited, 429)["code"] == "rate_limit_exceeded"
    assert "x-should-retry" not in limited  # the SDKs retry it after Retry-After, as they should


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain; charset=utf-8"])
def test_a_json_body_without_a_json_content_type_is_read_as_json(api, content_type):
    text = u("no content type")
    extra = {"content_type": content_type or ""}  # "": no Content-Type (DRF's test client sets one otherwise)
    r = api.generic("POST", "/v1/embeddings", f'{{"model": "{MODEL}", "input": ["{text}"]}}'.encode(), **extra)
    assert len(_vectors(r)[0]) == 384
    job = api.generic("POST", "/v1/jobs", b'{"texts": ["a", "b"]}', **extra)
    assert job.status_code == 202, job.content
    broken = api.generic("POST", "/v1/jobs", b'{"texts": ', **extra)
    assert _error(broken)["code"] == "invalid_json"  # still JSON's error, not a 415


@pytest.mark.django_db
def test_a_jobs_202_counts_its_own_texts_in_the_rate_headers(alice, api_no_worker):
    tier_limit(alice, daily_limit=100)
    created = api_no_worker.post("/v1/jobs", {"texts": [u() for _ in range(7)]}, format="json")
    assert created.status_code == 202, created.content
    assert created["X-RateLimit-Limit"] == "100" and created["X-RateLimit-Remaining"] == "93"
    again = api_no_worker.post("/v1/jobs", {"input": ["one more", "and another"]}, format="json")
    assert again["X-RateLimit-Remaining"] == "91"


def test_job_results_come_as_base64_and_as_output_dtype(api, minilm):
    texts = [u("a job's results"), u("as base64")]
    job = api.post("/v1/jobs", {"model": MODEL, "input": texts}, format="json").json()
    assert _wait_job(api, job["id"])["status"] == "succeeded"
    floats = np.array([r["embedding"] for r in api.get(f"/v1/jobs/{job['id']}/results").json()["data"]],
                      dtype=np.float32)
    page = api.get(f"/v1/jobs/{job['id']}/results?encoding_format=base64")
    assert page.status_code == 200, page.content
    got = np.array([np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") for r in page.json()["data"]])
    np.testing.assert_array_equal(got, floats)
    assert np.dot(got[0], minilm.model.encode(texts[0])) > 0.999
    bits = api.get(f"/v1/jobs/{job['id']}/results?encoding_format=base64&output_dtype=ubinary").json()["data"]
    assert [base64.b64decode(r["embedding"]) for r in bits] == [np.packbits(v > 0).tobytes() for v in floats]
    assert _error(api.get(f"/v1/jobs/{job['id']}/results?encoding_format=int4"))["param"] == "encoding_format"


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/embed/batch"])
def test_input_is_taken_for_texts(api_no_worker, url):
    body = {"input": ["first", "second", "third"], "wait": 0} if url.endswith("batch") else {"input": ["a", "b", "c"]}
    created = api_no_worker.post(url, body, format="json")
    assert created.status_code == 202, created.content
    assert created.json()["total"] == 3
    both = _error(api_no_worker.post(url, {"input": ["a"], "texts": ["b"]}, format="json"))
    assert both["param"] == "input" and "not both" in both["message"]
    neither = _error(api_no_worker.post(url, {"model": MODEL}, format="json"))
    assert neither["param"] == "texts" and "texts is required (or input" in neither["message"]
    bad = _error(api_no_worker.post(url, {"input": ["ok", ""]}, format="json"))
    assert bad["param"] == "input" and "input[1] is an empty string" in bad["message"]
    hint = _error(api_no_worker.post(url, {"inputs": ["a"]}, format="json"))
    assert hint["code"] == "unknown_field" and "(did you mean `texts`?)" in hint["message"]
    assert "This endpoint takes: " in hint["message"] and ", input," in hint["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), [("POST", "/embeddings"), ("POST", "/embed"), ("POST", "/embed/batch"),
                                              ("GET", "/models"), ("GET", "/jobs/5b0e8f3c/results")])
def test_the_api_without_v1_is_a_404_saying_where_it_lives(client, method, path):
    error = _error(client.generic(method, path, b'{"input": "x"}', content_type="application/json"), 404)
    assert error["message"] == (f"No route for {path}: the API lives under /v1/ ({method} /v1{path}); "
                                "a client's base URL ends in /v1.")
    assert error["code"] == "not_found"


@pytest.mark.django_db
def test_other_unknown_paths_are_a_plain_404(client):
    assert _error(client.get("/nothing/here"), 404)["message"] == "No route for /nothing/here."
    assert _error(client.get("/v1/nothing"), 404)["message"] == "No route for /v1/nothing."
