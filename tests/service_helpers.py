"""A real bagbot HTTP service on loopback, for the service tests.

:func:`serve_in_thread` runs uvicorn in a thread of the test process, on a socket bound to
``127.0.0.1`` with a port the kernel picks, around an app the test builds (so the test can
hand it a router with a scripted exchange). :func:`serve_process` runs ``bagbot serve`` as a
subprocess, as an operator would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import httpx
import uvicorn
from fastapi import FastAPI

from bagbot_core.db import get_engine, session_factory
from bagbot_core.service.auth import RateLimiter
from bagbot_core.service.config import ServiceSettings
from bagbot_core.tokens import create_token

#: Seconds a server may take to start or stop before the test fails.
START_TIMEOUT = 60.0


@attrs.define
class Served:
    url: str
    server: uvicorn.Server | None = None
    process: subprocess.Popen[bytes] | None = None

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0,
                            **kwargs)  # type: ignore[arg-type]


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, settings: ServiceSettings | None = None,
                    log_level: str = "warning", *, own_logging: bool = True
                    ) -> Iterator[Served]:
    """Serve ``app`` until the block ends; then shut down as on SIGTERM.

    :param own_logging: let uvicorn set up its loggers (``False``: leave the test's
        handlers on them).
    """
    sock = loopback_socket()
    options = (settings or ServiceSettings()).uvicorn_options()
    if not own_logging:
        options["log_config"] = None
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the service did not start (see the log above)")
        time.sleep(0.01)
    host, port = sock.getsockname()[:2]
    try:
        yield Served(f"http://{host}:{port}", server=server)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the service did not stop"


def freeze_rate_limits(served: Served) -> None:
    """From now on the running service's token buckets never refill (same rate and burst):
    a test that counts requests up to the limit then does not depend on how fast a loaded
    machine answers them."""
    assert served.server is not None
    service = served.server.config.app.state.bagbot
    limiter = service.limiter
    service.limiter = RateLimiter(limiter.rate, limiter.burst, clock=lambda: 0.0)


def free_port() -> int:
    with contextlib.closing(loopback_socket()) as sock:
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_process(database_url: str, env: Mapping[str, str] | None = None,
                  args: tuple[str, ...] = (), log: Path | None = None) -> Iterator[Served]:
    """``bagbot serve`` in a subprocess; its stdout and stderr go to ``log``. The caller
    stops it (SIGTERM) or the block's end does."""
    port = free_port()
    environment = {**os.environ, **(env or {})}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("bagbot")), "--database-url", database_url,
         "serve", "--port", str(port), *args],
        env=environment, stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", process=process)
    try:
        _wait_ready(served)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]


def _wait_ready(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=served.url, timeout=5.0) as client:
        while True:
            assert served.process is not None
            if served.process.poll() is not None:
                raise RuntimeError(f"bagbot serve exited with {served.process.returncode}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bagbot serve did not become ready")
            time.sleep(0.05)


def make_token(database_url: str, user_id: str, *, admin: bool = False, live: bool = False,
               expires_in: dt.timedelta | None = None) -> str:
    """A new API token (the raw text) in the service's database."""
    with session_factory(get_engine(database_url))() as session:
        raw, _ = create_token(session, user_id, admin=admin, live=live,
                              expires_in=expires_in)
    return raw
