"""``manage.py check``: every bad ``BEAMBRIDGE_*`` setting, as Django errors and warnings."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .._config import check_settings


@checks.register("beambridge")  # type: ignore[untyped-decorator]
def check_beambridge_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings

    found = []
    for problem in check_settings(settings):
        kind = checks.Error if problem.level == "error" else checks.Warning
        found.append(kind(str(problem), id=problem.id, obj=problem.key))
    return found
