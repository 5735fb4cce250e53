#!/usr/bin/env python
"""Django's command line for the example project (``manage.py check`` runs beambridge's checks)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bbsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
