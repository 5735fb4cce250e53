"""gunicorn settings for the demo's web app (``-c python:beambridge._demo.gunicorn_conf``):
beambridge's worker hooks, and only warnings in the log."""

from beambridge.web.hooks import post_fork, worker_exit

__all__ = ["loglevel", "post_fork", "worker_exit"]

loglevel = "warning"
