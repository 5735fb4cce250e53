"""A Django project for tests/web/test_metrics.py, run in its own process (Django is configured
once per process): ``python -m tests.web.apps.django_metrics`` prints, as JSON, a scrape before
any rpc, whether that opened a node, and a scrape after ``BB_RPCS`` rpcs. Settings from BEAMBRIDGE_*."""

from __future__ import annotations

import json
import os
import sys

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from beambridge.web import django as bbdj


def rpc(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(bbdj.rpc("bbw_examples", "node_name")))


urlpatterns = [path("", include("beambridge.web.django.urls")), path("rpc", rpc)]


def main() -> None:
    import django
    from django.conf import settings
    from django.test import Client

    from beambridge import web

    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["testserver"], SECRET_KEY="x" * 50, DATABASES={},
        ROOT_URLCONF="tests.web.apps.django_metrics", INSTALLED_APPS=["beambridge.web.django"],
        **{k: v for k, v in os.environ.items() if k.startswith("BEAMBRIDGE_")})
    django.setup()
    client = Client()
    before = client.get("/metrics")
    opened = web.node_if_open() is not None
    for _ in range(int(os.environ["BB_RPCS"])):
        assert client.get("/rpc").status_code == 200
    after = client.get("/metrics", HTTP_ACCEPT="text/plain")
    json.dump({"status": before.status_code, "content_type": after["Content-Type"],
               "before": before.content.decode(), "opened_by_scrape": opened,
               "after": after.content.decode(), "node": web.get_node().name}, sys.stdout)
    web.close_node()


if __name__ == "__main__":
    main()
