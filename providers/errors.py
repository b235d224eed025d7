"""Provider errors a client may see, and their message templates (tests assert the text).

They are ApiErrors like every other (embedplatform/errors.py), so the one exception handler
renders them in OpenAI's envelope; only the status differs: an upstream failure is the
upstream's fault (502), an upstream that does not answer in time is 504.
"""

from __future__ import annotations

from embedplatform.errors import ApiError

PROVIDER_NOT_FOUND = "No provider `{name}` in your account; GET /v1/providers lists yours."
PROVIDER_NAME_TAKEN = "You already have a provider named `{name}`; pick another name or PATCH that one."
UPSTREAM_FAILED = "The provider `{name}` answered {status}: {message}"
UPSTREAM_UNREACHABLE = "The provider `{name}` could not be reached: {message}"
UPSTREAM_TIMEOUT = "The provider `{name}` did not answer within {seconds:g} s."
UPSTREAM_BAD_RESPONSE = "The provider `{name}` sent a response we cannot use: {message}"
UPSTREAM_REDIRECT = (
    "The provider `{name}` answered with a redirect ({status} to {location}); redirects are not "
    "followed, so set the final URL as the endpoint."
)
ENDPOINT_REFUSED = "endpoint {reason}"
SECRET_UNREADABLE = (
    "The stored provider secret cannot be decrypted with ENCRYPTION_KEY: the key that encrypted it is "
    "missing. Operators: put the old key back at the end of ENCRYPTION_KEY (new,old)."
)


class ProviderError(ApiError):
    """The upstream failed (or refused us) for good: 502 with the upstream's message."""

    status = 502
    type = "upstream_error"
    code = "provider_error"
    kind: str  # set where a call failed (providers.clients._error): the metrics label


class ProviderTimeout(ApiError):
    status = 504
    type = "timeout_error"
    code = "provider_timeout"


class SecretUnreadable(ApiError):
    """ENCRYPTION_KEY no longer holds the key a stored secret was encrypted with."""

    status = 503
    type = "server_error"
    code = "encryption_key_mismatch"
