"""gunicorn settings for the examples: beambridge's explicit worker hooks."""

from beambridge.web.hooks import post_fork, worker_exit

# gunicorn 25.1+ opens a control socket at one fixed path (~/.gunicorn/gunicorn.ctl) that every
# server of the same user shares; the examples need none (older gunicorns ignore the name).
control_socket_disable = True

__all__ = ["control_socket_disable", "post_fork", "worker_exit"]
