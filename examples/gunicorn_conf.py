"""gunicorn hooks for the examples: beambridge's explicit worker hooks."""

from beambridge.web.hooks import post_fork, worker_exit

__all__ = ["post_fork", "worker_exit"]
