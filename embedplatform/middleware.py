"""Django's browser middleware, skipped on the JSON API.

Sessions, CSRF cookies, `request.user` and flash messages serve the admin and the API docs.
The API authenticates every request itself (DRF: API key or JWT, never a cookie), so on its
paths these four only cost time: about a tenth of a cache hit (bench/profile_hit.py). Each
class here is the Django middleware it extends (the admin's system checks look for them)
and runs it everywhere but under API_PREFIXES.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.contrib.auth.middleware import AuthenticationMiddleware as _Authentication
from django.contrib.messages.middleware import MessageMiddleware as _Messages
from django.contrib.sessions.middleware import SessionMiddleware as _Sessions
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware as _Csrf
from django.utils.deprecation import MiddlewareMixin

from embedplatform.errors import dependency_error

API_PREFIXES = ("/v1/", "/health/", "/metrics")


class _BrowserOnly(MiddlewareMixin):
    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if request.path_info.startswith(API_PREFIXES):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserOnly, _Sessions):
    pass


class CsrfViewMiddleware(_BrowserOnly, _Csrf):
    pass


class AuthenticationMiddleware(_BrowserOnly, _Authentication):
    pass


class MessageMiddleware(_BrowserOnly, _Messages):
    pass


class DependencyErrorMiddleware:
    """The last line of the SPEC's "a dependency outage is a 503, never a 500".

    DRF's exception handler (embedplatform/errors.py) maps the errors raised inside a view; this
    maps the same errors (errors.dependency_error) when they escape the view anyway: raised
    while handling another error, in finalize_response, or in a plain Django view.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        mapped = dependency_error(exception, where=request.path)
        if mapped is None:
            return None  # Django's handler500 answers (with the envelope) and logs it
        body, status, headers = mapped
        response = JsonResponse(body, status=status, headers=headers)
        # dependency_error logged it as a warning, not an ERROR per request (Django's flag, not in the stubs).
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response
