"""URLs and views of the Django test project (settings made by the test)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from beambridge.term import Atom
from beambridge.web import django as bbdj


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(bbdj.rpc("bbw_examples", "hello")))


def add(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"sum": bbdj.rpc("bbw_examples", "add",
                                         [int(request.GET["a"]), int(request.GET["b"])]),
                         "node": bbdj.get_node().name})


def kv(request: HttpRequest, key: str) -> HttpResponse:
    """Mnesia through rpc: GET reads, POST writes the body."""
    if request.method == "POST":
        bbdj.rpc("bbw_store", "put", [key.encode(), request.body])
        return HttpResponse("stored\n", status=201)
    found = bbdj.rpc("bbw_store", "get", [key.encode()])
    if found == Atom("not_found"):
        return HttpResponse("no such key\n", status=404)
    return HttpResponse(found[1], content_type="application/octet-stream")


urlpatterns = [path("hello", hello), path("add", add), path("kv/<str:key>", kv)]
