"""`SimServer`: the simulator on a real loopback socket, in a background thread.

We bind the socket ourselves (so port 0 works and the port is known before the first
request), then run uvicorn on its own event loop in a daemon thread. `start()` returns
once the socket accepts connections; `stop()` breaks any response still in flight, lets
uvicorn close every connection, and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType

import uvicorn

from dskit.sim._app import SimApp, SimStats
from dskit.sim._config import SimConfig

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def _new_loop() -> asyncio.AbstractEventLoop:
    with contextlib.suppress(ImportError):
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class QuietThread(logging.Filter):
    """Drops the records below WARNING logged from one thread: the simulator's own
    uvicorn chatter ("Uvicorn running on ...") in a process that runs its own server."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.WARNING


class SimServer:
    """The offline DeepSeek simulator on `host:port` (port 0 picks a free port).

    With `ssl_certfile` (and `ssl_keyfile`) it serves HTTPS, so TLS paths are testable.

    with SimServer(SimConfig(token_ms=5)) as sim:
        httpx2.post(f"{sim.base_url}/chat/completions", ...)
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self._tls = (ssl_certfile, ssl_keyfile) if ssl_certfile else None
        self.app = SimApp(self.config)
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (still known after stop(), for logs)."""
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def stats(self) -> SimStats:
        return self.app.stats

    def reset_stats(self) -> None:
        self.app.stats = SimStats()

    def clear_cache(self) -> None:
        """Forget every cached prompt block (thread-safe: done on the server's loop)."""
        if self._loop is None:
            self.app.cache.clear()
        else:
            self._loop.call_soon_threadsafe(self.app.cache.clear)

    def start(self) -> SimServer:
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._sock = _bind(self.host, self._requested_port)
        self._port = int(self._sock.getsockname()[1])
        name = f"dskit-sim-{self.port}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the simulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have just closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the simulator thread did not stop")
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.base_url if self._thread is not None else "stopped"
        return f"<SimServer {state}>"

    def _run(self) -> None:
        loop = _new_loop()
        self._loop = loop
        quiet = QuietThread(threading.get_ident())
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(quiet)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start(); the thread must not die loudly
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            uvicorn_log.removeFilter(quiet)

    async def _serve(self) -> None:
        assert self._sock is not None
        self._stopping = asyncio.Event()
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            log_config=None,
            log_level=None,  # a level set here would silence the host process's uvicorn too
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=75,  # pooled client connections outlive short test pauses
            server_header=False,
            ssl_certfile=self._tls[0] if self._tls else None,
            ssl_keyfile=self._tls[1] if self._tls else None,
        )
        server = uvicorn.Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._ready.set()
        await self._stopping.wait()
        self.app.abort_all()
        await server.shutdown(sockets=[self._sock])
