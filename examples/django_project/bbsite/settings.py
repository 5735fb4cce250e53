"""Settings of the example Django project; beambridge's come from the environment (run.py)."""

import os

SECRET_KEY = "example-only-" + "x" * 40
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["beambridge.web.django"]
MIDDLEWARE = ["beambridge.web.django.ErlangErrorMiddleware"]
ROOT_URLCONF = "bbsite.urls"
DATABASES: dict = {}
USE_TZ = True
# Django sets the process's TZ to TIME_ZONE (default America/Chicago): gunicorn's log times too.
TIME_ZONE = "UTC"

BEAMBRIDGE_ERLANG_NODE = os.environ.get("BEAMBRIDGE_ERLANG_NODE")
BEAMBRIDGE_COOKIE = os.environ.get("BEAMBRIDGE_COOKIE")
BEAMBRIDGE_EPMD_PORT = int(os.environ.get("BEAMBRIDGE_EPMD_PORT", "4369"))
BEAMBRIDGE_NODE_NAME = os.environ.get("BEAMBRIDGE_NODE_NAME", "django_web@127.0.0.1")
BEAMBRIDGE_RPC_TIMEOUT = 5
