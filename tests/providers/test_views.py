from __future__ import annotations

import pytest

from providers.models import ProviderConfig
from tests.factories import ProviderFactory
from tests.providers.conftest import SECRET, openai_body


@pytest.fixture
def alice_provider(alice, jwt_client, fake) -> dict:
    response = jwt_client(alice).post("/v1/providers", openai_body(fake), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_crud_shows_only_a_mask(alice, jwt_client, fake):
    client = jwt_client(alice)
    created = client.post("/v1/providers", openai_body(fake, model="text-embedding-3-large"), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["api_key_mask"] == "sk-...WXYZ"
    assert body["endpoint"] == fake.url()
    assert body["request_template"] == {"model": "{{model}}", "input": "{{texts}}", "encoding_format": "float"}
    assert body["response_path"] == "$.data[*].embedding"
    assert body["models"] == ["myopenai/text-embedding-3-large"]
    pid = body["id"]

    listed = client.get("/v1/providers")
    assert [p["id"] for p in listed.json()["data"]] == [pid]
    assert client.get(f"/v1/providers/{pid}").json()["name"] == "myopenai"

    patched = client.patch(f"/v1/providers/{pid}", {"api_key": "sk-another-key-0000abcd", "max_inputs": 10},
                           format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["api_key_mask"] == "sk-...abcd"
    assert patched.json()["max_inputs"] == 10

    for response in (created, listed, patched, client.get(f"/v1/providers/{pid}")):
        assert SECRET not in response.content.decode()
        assert "sk-another-key-0000abcd" not in response.content.decode()

    deleted = client.delete(f"/v1/providers/{pid}")
    assert deleted.json() == {"id": pid, "deleted": True}
    assert client.get(f"/v1/providers/{pid}").status_code == 404


def test_an_api_key_cannot_manage_providers(alice, client_for, fake):
    response = client_for(alice).post("/v1/providers", openai_body(fake), format="json")
    assert response.status_code == 403
    assert "needs a user session" in response.json()["error"]["message"]
    assert client_for(alice).get("/v1/providers").status_code == 403
    assert client_for().get("/v1/providers").status_code == 401
    assert not ProviderConfig.objects.exists()


@pytest.mark.parametrize(
    ("changes", "param", "message"),
    [
        ({"preset": "nope"}, "preset", "is not a valid choice"),
        ({"name": "has/slash"}, "name", "no '/'"),
        ({"request_template": {"model": "{{model}}"}}, "request_template", 'must contain "{{texts}}"'),
        ({"request_template": "not an object"}, "request_template", "must be a JSON object"),
        ({"response_path": "$.data["}, "response_path", "not a valid JSONPath"),
        ({"headers": {"X-Key": "{{secret}}"}}, "headers", "unknown placeholder"),
        ({"endpoint": "http://api.example.com/v1/embeddings"}, "endpoint", "must use https"),
        ({"endpoint": "https://localhost/v1/embeddings"}, "endpoint", "loopback"),
        ({"endpoint": "https://169.254.169.254/latest"}, "endpoint", "link-local"),
        ({"endpoint": "https://[::ffff:10.0.0.1]/x"}, "endpoint", "embeds 10.0.0.1"),
        ({"api_key": ""}, "api_key", "required by this preset"),
        ({"max_inputs": 0}, "max_inputs", "greater than or equal to 1"),
    ],
)
def test_bad_configurations_are_400_naming_the_field(alice, jwt_client, fake, changes, param, message):
    response = jwt_client(alice).post("/v1/providers", {**openai_body(fake), **changes}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]


def test_custom_needs_endpoint_template_and_path(alice, jwt_client, fake):
    client = jwt_client(alice)
    response = client.post("/v1/providers", {"name": "mine", "endpoint": fake.url(), "api_key": SECRET}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "request_template"
    response = client.post("/v1/providers", {
        "name": "mine", "preset": "custom", "endpoint": fake.url("/v2/embed"), "api_key": SECRET,
        "request_template": {"model": "{{model}}", "texts": "{{texts}}"},
        "response_path": "$.embeddings.float[*]", "model": "embed-english-v3.0",
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["headers"] == {"Authorization": "Bearer {{api_key}}"}


def test_names_are_unique_per_tenant(alice, bob, jwt_client, fake, alice_provider):
    again = jwt_client(alice).post("/v1/providers", openai_body(fake), format="json")
    assert again.status_code == 400 and again.json()["error"]["code"] == "name_taken"
    assert jwt_client(bob).post("/v1/providers", openai_body(fake), format="json").status_code == 201


def test_bob_cannot_see_change_delete_or_test_alices_provider(bob, jwt_client, alice_provider):
    client, pid = jwt_client(bob), alice_provider["id"]
    assert client.get("/v1/providers").json()["data"] == []
    assert client.get(f"/v1/providers/{pid}").status_code == 404
    assert client.patch(f"/v1/providers/{pid}", {"model": "x"}, format="json").status_code == 404
    assert client.delete(f"/v1/providers/{pid}").status_code == 404
    assert client.post(f"/v1/providers/{pid}/test").status_code == 404
    assert client.get("/v1/providers/99999999999999999999999").status_code == 404
    assert ProviderConfig.objects.filter(pk=pid, model="text-embedding-3-small").exists()


def test_the_test_endpoint_makes_one_real_call(alice, jwt_client, fake, alice_provider):
    response = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["dimensions"] == 8 and body["model"] == "text-embedding-3-small"
    assert len(fake.requests) == 1


def test_the_test_endpoint_says_what_failed(alice, jwt_client, fake, alice_provider):
    fake.then(redirect="http://169.254.169.254/latest/meta-data/")
    body = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test").json()
    assert body["ok"] is False and body["status"] == 502
    assert "redirects are not followed" in body["error"]
    fake.expected_key = "sk-something-else"
    body = jwt_client(alice).post(f"/v1/providers/{alice_provider['id']}/test").json()
    assert "answered 401: Incorrect API key provided: sk-...WXYZ" in body["error"]
    assert SECRET not in str(body)


def test_with_no_provider_worker_a_miss_is_a_fast_503(charlie, client_for, fake, redis_db):
    """No worker consumes the provider queue (none started, heartbeat key absent): the request
    is refused at once with 503 + Retry-After instead of waiting out SYNC_WAIT_SECONDS."""
    ProviderFactory(tenant=charlie.tenant, name="lonely", endpoint=fake.url(), api_key="sk-test-1234")
    response = client_for(charlie).post("/v1/embeddings", {"model": "lonely/text-embedding-3-small", "input": "x"},
                                        format="json")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "no_worker"


# --- issue 16: stored secrets never move -------------------------------------------------------

@pytest.fixture
def other_host():
    """A second upstream, as an attacker's host would be (allow-listed like the fake)."""
    from tests.fakes.provider_server import FakeProvider

    server = FakeProvider()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"endpoint": "OTHER"}, "endpoint"),
        ({"preset": "voyage", "endpoint": "OTHER"}, "preset"),
        ({"headers": {"X-Log": "{{api_key}}"}}, "headers"),
        ({"request_template": {"model": "{{model}}", "input": "{{texts}}", "echo": "x"}}, "request_template"),
    ],
)
def test_changing_where_the_key_goes_needs_the_api_key_again(alice, jwt_client, fake, other_host, settings,
                                                            alice_provider, changes, field):
    """GIVEN a provider holding an OpenAI key WHEN a session PATCHes where or how the key is sent
    without the key THEN 400 (param api_key, saying why), nothing changes, and /test never sends
    the stored key to the new host."""
    settings.PROVIDER_ALLOWED_HOSTS = [fake.host, other_host.host]
    client, pid = jwt_client(alice), alice_provider["id"]
    changes = {k: other_host.url() if v == "OTHER" else v for k, v in changes.items()}
    response = client.patch(f"/v1/providers/{pid}", changes, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "api_key" and error["code"] == "api_key_required"
    assert field in error["message"] and "send the api_key again" in error["message"]
    assert client.get(f"/v1/providers/{pid}").json() == alice_provider

    assert client.post(f"/v1/providers/{pid}/test").json()["ok"] is True
    assert other_host.requests == [] and len(fake.requests) == 1

    # With the key in the same request the change is made, and only that key goes to the new place.
    new_key = "sk-restated-key-0000abcd"
    fake.expected_key = other_host.expected_key = None
    response = client.patch(f"/v1/providers/{pid}", {**changes, "api_key": new_key}, format="json")
    assert response.status_code == 200, response.content
    client.post(f"/v1/providers/{pid}/test")
    sent = [r.headers for r in (*fake.requests, *other_host.requests)][-1]
    assert SECRET not in str(sent) and new_key in str(sent)


def test_changes_that_do_not_route_the_key_need_no_key(alice, jwt_client, fake, alice_provider):
    client, pid = jwt_client(alice), alice_provider["id"]
    for changes in ({"model": "text-embedding-3-large", "max_inputs": 5}, {"response_path": "$.data[*].embedding"},
                    {"endpoint": fake.url()}, {"preset": "openai"}, {"headers": None}):  # unchanged values
        response = client.patch(f"/v1/providers/{pid}", changes, format="json")
        assert response.status_code == 200, (changes, response.content)
    assert response.json()["api_key_mask"] == "sk-...WXYZ"
    # "" removes the key: nothing is left to move (the openai preset then refuses to work without one).
    response = client.patch(f"/v1/providers/{pid}", {"endpoint": fake.url("/v2"), "api_key": ""}, format="json")
    assert response.status_code == 400 and "required by this preset" in response.json()["error"]["message"]


SECRET_HEADER = "org-secret-value-56789"


@pytest.fixture
def header_provider(alice, jwt_client, fake) -> dict:
    body = openai_body(fake, headers={"Authorization": "Bearer {{api_key}}", "X-Org": SECRET_HEADER})
    response = jwt_client(alice).post("/v1/providers", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_secret_header_values_are_encrypted_and_masked(alice, jwt_client, fake, header_provider):
    """GIVEN a header with a literal value THEN the API shows only its mask, the raw row holds no
    clear value, and the upstream still receives it."""
    from django.db import connection

    client, pid = jwt_client(alice), header_provider["id"]
    expected = {"Authorization": "Bearer {{api_key}}", "X-Org": "org...6789"}
    assert header_provider["headers"] == expected
    assert client.get(f"/v1/providers/{pid}").json()["headers"] == expected
    assert client.get("/v1/providers").json()["data"][0]["headers"] == expected
    with connection.cursor() as cur:
        cur.execute(f"SELECT headers::text, headers_encrypted, headers_digest FROM {ProviderConfig._meta.db_table}")
        raw = repr(cur.fetchall())
    assert SECRET_HEADER not in raw and SECRET_HEADER[3:-4] not in raw

    assert client.post(f"/v1/providers/{pid}/test").json()["ok"] is True
    assert fake.requests[-1].headers["x-org"] == SECRET_HEADER


def test_a_mask_sent_back_keeps_the_value_but_cannot_move_it(alice, jwt_client, fake, other_host, settings,
                                                             header_provider):
    settings.PROVIDER_ALLOWED_HOSTS = [fake.host, other_host.host]
    client, pid = jwt_client(alice), header_provider["id"]
    shown = header_provider["headers"]
    # The shown headers sent back unchanged: nothing changes, no key needed.
    response = client.patch(f"/v1/providers/{pid}", {"headers": shown, "model": "m2"}, format="json")
    assert response.status_code == 200, response.content
    client.post(f"/v1/providers/{pid}/test")
    assert fake.requests[-1].headers["x-org"] == SECRET_HEADER

    # A new endpoint with the api_key but the header secret only as its mask (or not sent): 400.
    for changes in ({"endpoint": other_host.url(), "api_key": SECRET},
                    {"endpoint": other_host.url(), "api_key": SECRET, "headers": shown}):
        response = client.patch(f"/v1/providers/{pid}", changes, format="json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["param"] == "headers" and "X-Org" in error["message"] and "in clear" in error["message"]
    client.post(f"/v1/providers/{pid}/test")
    assert other_host.requests == []

    restated = {"endpoint": other_host.url(), "api_key": SECRET,
                "headers": {"Authorization": "Bearer {{api_key}}", "X-Org": "org-new-value-00001111"}}
    assert client.patch(f"/v1/providers/{pid}", restated, format="json").status_code == 200
    other_host.expected_key = SECRET
    client.post(f"/v1/providers/{pid}/test")
    assert [r.headers["x-org"] for r in other_host.requests] == ["org-new-value-00001111"]


def test_the_cache_version_follows_everything_that_shapes_the_vectors(alice, jwt_client, fake, header_provider):
    from providers.dispatch import provider_cache_version

    client, pid = jwt_client(alice), header_provider["id"]

    def version() -> str:
        return provider_cache_version(ProviderConfig.objects.get(pk=pid))

    seen = [version()]
    assert seen[0].startswith(f"byok-{pid}-")
    # Neither a new key for the same upstream nor the batch size changes the vectors.
    client.patch(f"/v1/providers/{pid}", {"api_key": "sk-rotated-key-00009999", "max_inputs": 3}, format="json")
    assert version() == seen[0]
    current = {"Authorization": "Bearer {{api_key}}", "X-Org": SECRET_HEADER}
    for changes in ({"endpoint": fake.url("/v1/other")},
                    {"request_template": {"model": "{{model}}", "input": "{{texts}}"}},
                    {"response_path": "$.data[*]['embedding']"},
                    {"headers": {**current, "X-Org": "org-another-value-1"}},
                    {"headers": {**current, "X-Org": "org-another-value-1", "X-Team": "{{api_key}}"}},
                    {"preset": "mistral"}):
        current = changes.get("headers", current)
        response = client.patch(f"/v1/providers/{pid}", {"api_key": SECRET, "headers": current, **changes},
                                format="json")
        assert response.status_code == 200, (changes, response.content)
        assert version() not in seen, changes
        seen.append(version())
