"""``bagbot serve``: bagbot's HTTP API (FastAPI on uvicorn), its dashboard and metrics.

Importing this package loads nothing heavy: FastAPI is imported by :mod:`.app` and the
modules it uses, and the command line imports those only inside ``bagbot serve``.
"""
