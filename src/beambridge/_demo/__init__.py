"""``beambridge demo``: the main job (``main``: a local cluster, a web app on both roads, the
cluster beside Python on one question) and the codec's round trip through BEAM (``codec``)."""
