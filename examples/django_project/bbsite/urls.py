"""Views of the example project: the same features as the Flask example, the Django way."""

import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from beambridge.compat import uwsgi
from beambridge.term import Atom
from beambridge.web import EwgiBridge
from beambridge.web import django as bb

_ewgi = EwgiBridge("bbw_hello_ewgi")


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"worker": os.getpid(), "node": bb.get_node().name})


def hello(request: HttpRequest) -> HttpResponse:
    testnode = uwsgi.erlang_connect(os.environ["BEAMBRIDGE_ERLANG_NODE"])
    answer = uwsgi.erlang_rpc(testnode, "bbw_examples", "hello", [])
    uwsgi.erlang_close(testnode)
    return HttpResponse(answer)


class BadRequest(Exception):
    """A query parameter that is missing or malformed: a JSON 400 saying which."""


def _integer(request: HttpRequest, name: str) -> int:
    value = request.GET.get(name)
    if value is None:
        raise BadRequest(f"{name} is missing; try /add?a=1&b=2")
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} is {value!r}, not an integer; try /add?a=1&b=2") from None


def add(request: HttpRequest) -> JsonResponse:
    try:
        numbers = [_integer(request, "a"), _integer(request, "b")]
    except BadRequest as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse({"sum": bb.rpc("bbw_examples", "add", numbers)})


@csrf_exempt
def kv(request: HttpRequest, key: str) -> HttpResponse:
    if request.method == "PUT":
        bb.rpc("bbw_store", "put", [key.encode(), request.body])
        return HttpResponse("stored\n", status=201)
    found = bb.rpc("bbw_store", "get", [key.encode()])
    if found == Atom("not_found"):
        return HttpResponse("no such key\n", status=404)
    return HttpResponse(found[1])


def shout(request: HttpRequest) -> JsonResponse:
    receiver = Atom(os.environ["EXAMPLE_RECEIVER"])
    answer = bb.rpc("bbw_examples", "request",
                    [(Atom("shout"), receiver), request.GET.get("text", "hi").encode(), 3000])
    if answer == Atom("timeout"):
        return JsonResponse({"error": "the receiver did not answer within 3 s"}, status=504)
    _ok, (_upper, text) = answer  # {ok, {upper, <<"HEY">>}}: example_handlers.handle's answer
    return JsonResponse({"answer": text.decode()})


def ewgi(request: HttpRequest, rest: str) -> HttpResponse:
    """Hand the raw WSGI request to the EWGI bridge and copy its answer."""
    captured: dict = {}

    def start_response(status: str, headers: list) -> None:
        captured["status"], captured["headers"] = status, headers

    body = b"".join(_ewgi(request.META, start_response))
    response = HttpResponse(body, status=int(captured["status"].split()[0]))
    for name, value in captured["headers"]:
        if name.lower() != "content-length":
            response[name] = value
    return response


urlpatterns = [
    path("", index), path("hello", hello), path("add", add), path("kv/<str:key>", kv),
    path("shout", shout), re_path(r"^ewgi/(?P<rest>.*)$", ewgi),
]
