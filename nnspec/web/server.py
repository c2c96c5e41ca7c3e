"""An app served on a background thread, for tests and for tools that screenshot the playground.

`serving(app)` starts uvicorn on a free loopback port, waits until it accepts connections (its lifespan, which
starts the checking process, has run), yields the base URL, and stops it on leaving.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serving(app: Any, host: str = "127.0.0.1", start_s: float = 120.0) -> Iterator[str]:
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="nnspec-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
