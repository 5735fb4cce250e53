"""Django views: ``path("metrics", beambridge.web.django.views.metrics)``, or include
``beambridge.web.django.urls``. Importing this module raises ``MetricsUnavailable`` when
prometheus_client is not installed (``pip install 'beambridge[metrics]'``)."""

from __future__ import annotations

from typing import Any

from .. import metrics as _metrics

__all__ = ["metrics"]


def metrics(request: Any) -> Any:
    """Prometheus metrics of this worker's node (every worker's under ``PROMETHEUS_MULTIPROC_DIR``);
    like any metrics endpoint it names your nodes: keep it off the public side."""
    from django.http import HttpResponse

    body, content_type = _metrics.render(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)
