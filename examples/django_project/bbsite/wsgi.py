"""WSGI entry point of the example project (gunicorn bbsite.wsgi:application)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bbsite.settings")
application = get_wsgi_application()
