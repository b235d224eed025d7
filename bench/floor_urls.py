"""The platform's URLs plus the floor of issue 21: a minimal Django view that does one Redis GET
and answers the bytes it finds (bench/e2e.py stores a real cache-hit answer there first), behind
the same middleware, server, processes and threads as the API. A hit can be no cheaper than this."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from embedplatform.redisconn import redis_client
from embedplatform.urls import handler400, handler403, handler404, handler500  # noqa: F401
from embedplatform.urls import urlpatterns as platform

FLOOR_KEY = "bench:floor:body"


@csrf_exempt
def floor(request: HttpRequest) -> HttpResponse:
    return HttpResponse(redis_client().get(FLOOR_KEY), content_type="application/json")


urlpatterns = [path("bench/floor", floor), *platform]
