"""Drop-in replacements for APIs that older Erlang bridges offered (``compat.uwsgi``)."""
