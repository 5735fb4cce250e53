"""tests/web/apps/flask_metrics.py under uWSGI: the explicit postfork hook restarts the metrics
timer in each worker (uWSGI forks without Python's fork handlers) and marks a worker dead at exit."""

from beambridge.web.hooks import register_uwsgi_postfork
from tests.web.apps.flask_metrics import app

register_uwsgi_postfork()

__all__ = ["app"]
