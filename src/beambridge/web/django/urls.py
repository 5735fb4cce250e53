"""``path("", include("beambridge.web.django.urls"))`` serves ``/metrics`` (Prometheus)."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "beambridge"
urlpatterns = [path("metrics", views.metrics, name="metrics")]
