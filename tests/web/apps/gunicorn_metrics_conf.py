"""gunicorn configuration for the metrics test: the worker hooks and the master's child_exit."""

from beambridge.web.hooks import child_exit, post_fork, worker_exit

__all__ = ["child_exit", "post_fork", "worker_exit"]
