from __future__ import annotations

import re

import pytest

from providers import ssrf
from providers.clients import Upstream, embed_call
from providers.errors import ProviderError
from providers.ssrf import EndpointRefused, endpoint_check
from tests.providers.conftest import SECRET


@pytest.fixture
def dns(monkeypatch):
    """A DNS we control: name -> list of addresses (a list of lists answers in turn)."""
    answers: dict[str, list] = {}

    def resolve(host, port):
        answer = answers[host]
        return answer.pop(0) if isinstance(answer[0], list) else answer

    monkeypatch.setattr(ssrf, "_resolve", resolve)
    return answers


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://api.example.com/v1/embeddings", "must use https"),
        ("ftp://api.example.com/x", "must be an absolute https URL"),
        ("https://user:pw@api.example.com/x", "may not contain credentials"),
        ("https://localhost/v1/embeddings", "a loopback address"),
        ("https://127.0.0.1:8443/v1/embeddings", "a loopback address"),
        ("https://10.0.0.5/v1/embeddings", "a private address"),
        ("https://192.168.1.10/v1/embeddings", "a private address"),
        ("https://169.254.169.254/latest/meta-data", "a link-local address"),
        ("https://[::1]/v1/embeddings", "a loopback address"),
        ("https://[::ffff:127.0.0.1]/v1/embeddings", "embeds 127.0.0.1: a loopback address"),
        ("https://[::ffff:169.254.169.254]/x", "embeds 169.254.169.254: a link-local address"),
        ("https://[fe80::1]/x", "a link-local address"),
        ("https://0.0.0.0/x", "an unspecified address"),
        ("https://224.0.0.1/x", "a multicast address"),
        ("https://100.64.0.1/x", "not a public address"),
    ],
)
def test_it_refuses_non_public_or_non_https_endpoints(url, reason, settings):
    settings.PROVIDER_ALLOWED_HOSTS = []
    with pytest.raises(EndpointRefused, match=reason):
        endpoint_check(url)


def test_a_name_resolving_to_a_private_address_is_refused_whichever_address_it_is(dns, settings):
    settings.PROVIDER_ALLOWED_HOSTS = []
    dns["evil.example"] = ["93.184.216.34", "127.0.0.1"]
    with pytest.raises(EndpointRefused, match=re.escape("'evil.example' resolves to 127.0.0.1: a loopback address")):
        endpoint_check("https://evil.example/v1/embeddings")


def test_a_public_name_passes_and_pins_the_checked_address(dns, settings):
    settings.PROVIDER_ALLOWED_HOSTS = []
    dns["api.example.com"] = ["93.184.216.34"]
    target = endpoint_check("https://api.example.com/v1/embeddings?x=1")
    assert target.address == "93.184.216.34"
    assert target.pinned_url() == "https://93.184.216.34:443/v1/embeddings?x=1"
    assert target.host_header == "api.example.com"


def test_allowlisted_host_or_host_port_may_be_private_and_http(settings):
    settings.PROVIDER_ALLOWED_HOSTS = ["127.0.0.1:9999", "localhost"]
    assert endpoint_check("http://127.0.0.1:9999/x").allowlisted
    assert endpoint_check("http://localhost:1234/x").allowlisted
    with pytest.raises(EndpointRefused, match="must use https"):
        endpoint_check("http://127.0.0.1:9998/x")  # another port is not listed


def test_dns_rebinding_is_caught_at_call_time(dns, settings):
    """GIVEN a name that was public at save time WHEN it resolves to 127.0.0.1 at call time THEN no call."""
    settings.PROVIDER_ALLOWED_HOSTS = []
    dns["rebind.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    endpoint_check("https://rebind.example/v1/embeddings")  # the save-time check passes
    up = Upstream(name="p", endpoint="https://rebind.example/v1/embeddings", template={"input": "{{texts}}"},
                  response_path="$.data[*].embedding", headers={}, api_key="", max_inputs=8)
    with pytest.raises(ProviderError, match=re.escape("resolves to 127.0.0.1: a loopback address")):
        embed_call(up, model="m", texts=["a"])


def test_the_call_connects_to_the_checked_address_with_the_hostname_as_host(fake, dns, settings):
    """The name is resolved once, by the check; the connection goes to that address."""
    dns["fake.test"] = ["127.0.0.1"]
    settings.PROVIDER_ALLOWED_HOSTS = [f"fake.test:{fake.port}"]
    up = Upstream(name="p", endpoint=f"http://fake.test:{fake.port}/v1/embeddings",
                  template={"model": "{{model}}", "input": "{{texts}}"}, response_path="$.data[*].embedding",
                  headers={"Authorization": "Bearer {{api_key}}"}, api_key=SECRET, max_inputs=8)
    vectors, _ = embed_call(up, model="m", texts=["hello"])
    assert vectors[0].tolist() == pytest.approx(fake.vector("hello"))
    assert fake.requests[0].headers["host"] == f"fake.test:{fake.port}"


def test_redirects_are_not_followed(fake):
    fake.then(redirect="http://169.254.169.254/latest/meta-data/")
    up = Upstream(name="p", endpoint=fake.url(), template={"input": "{{texts}}"}, response_path="$.data[*].embedding",
                  headers={"Authorization": "Bearer {{api_key}}"}, api_key=SECRET, max_inputs=8)
    with pytest.raises(ProviderError, match="redirects are not followed"):
        embed_call(up, model="m", texts=["a"])
    assert len(fake.requests) == 1
