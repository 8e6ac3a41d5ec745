"""``cellmorphnet serve``: a run held in memory (``service``), its micro-batching model thread (``batching``), the
FastAPI application (``app``) with its connection handling (``connections``) and the web page (``static/``).

Nothing here is imported by ``cellmorphnet.serve`` itself, so the service and batcher load without FastAPI."""
