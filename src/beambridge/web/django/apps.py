"""The Django app config: registers the settings checks; opens nothing."""

from __future__ import annotations

from django.apps import AppConfig


class BeambridgeConfig(AppConfig):  # type: ignore[misc]  # django has no types
    name = "beambridge.web.django"
    label = "beambridge"
    verbose_name = "beambridge (Erlang)"

    def ready(self) -> None:
        # Only the checks: no node, no connection, no EPMD registration at startup (Django runs
        # ready() in management commands and in a pre-fork master, where a node must not live).
        from . import checks  # noqa: F401
