"""Serve the gateway with gunicorn's gevent workers: ``cartwheel run gateway`` / ``python -m services.gateway``.

Nothing here imports the app, NATS or prometheus_client at module level: the master only forks,
and each worker imports the app after gevent's monkey-patching (the worker's ``init_process``),
then starts its NATS bridge in ``post_worker_init``, so the bridge's loop runs as a greenlet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from cartwheel.files import private_dir
from cartwheel.heap import freeze_startup_heap
from cartwheel.natsserver import spawn
from cartwheel.observability import ACCESS_LOGGER, configure_json_logger, configure_logging
from cartwheel.settings import Settings
from cartwheel.tracing import configure_tracing
from services.gateway.guard import CLOSE
from services.gateway.migrate import migrate_database

log = logging.getLogger("cartwheel.gateway.server")

WORKER_CONNECTIONS = 2000  # must exceed the peak number of open SSE streams per worker
GRACEFUL_TIMEOUT = 5  # Ctrl-C stops everything well within 10 s
# After a 413, read and drop what the client still sends (up to these bounds), so that a client that reads
# only once it has sent everything (urllib, curl) gets the answer instead of a broken pipe.
LINGER_SECONDS = 10.0  # in all
LINGER_IDLE_SECONDS = 1.0  # with nothing arriving
LINGER_BYTES = 64 * 1024 * 1024


def serve(settings: Settings) -> int:
    """Run gunicorn in the foreground until it is stopped; its exit status."""
    if settings.admin_token is None:
        settings = settings.with_secrets()
    configure_logging("gateway", settings.log_level, settings.log_format)
    configure_json_logger(ACCESS_LOGGER)
    prepare_metrics_dir(settings)
    log.info(
        "gateway serving http://%s:%s with %d gevent workers",
        settings.gateway_host,
        settings.gateway_port,
        settings.gateway_workers,
    )
    if not migrate_database(settings):
        return 1
    try:
        GatewayServer(settings).run()
    except SystemExit as stop:  # gunicorn's arbiter leaves through sys.exit
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    return 0


def prepare_metrics_dir(settings: Settings) -> Path:
    """Point prometheus_client's multiprocess mode at an empty directory (the operator's, else one in var/)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else settings.var_dir / "prometheus" / f"gateway-{settings.gateway_port}"
    if path.exists():
        for stale in path.glob("*.db"):
            stale.unlink()
    private_dir(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())
    if "prometheus_client" in sys.modules:  # imported before the variable was set: choose the value class again
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return path


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    host = f"[{settings.gateway_host}]" if ":" in settings.gateway_host else settings.gateway_host
    return {
        "bind": [f"{host}:{settings.gateway_port}"],
        "workers": settings.gateway_workers,
        "worker_class": gateway_worker_class,  # called once, in the master
        "worker_connections": WORKER_CONNECTIONS,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 30,
        "keepalive": 5,
        "preload_app": False,  # a NATS connection must never cross a fork
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logger_class": PropagatingLogger,
        "proc_name": "cartwheel-gateway",
        "control_socket_disable": True,  # it would write to ~/.gunicorn; containers run with a read-only root
        "when_ready": serve_metrics(settings),
        "post_worker_init": start_bridge,
        "worker_exit": close_bridge,
        "child_exit": forget_worker_metrics,
        "post_request": close_unusable_connection,
    }


class GatewayServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from services.gateway.app import create_app  # in the worker, after gevent's patching
        from services.gateway.guard import ClientGuard

        configure_tracing("gateway", self.settings.otel_exporter)  # per worker: the SDK's threads don't cross a fork
        app = create_app(self.settings)
        app.wsgi_app = ClientGuard(app.wsgi_app, self.settings)  # type: ignore[method-assign]
        return app


class PropagatingLogger(GunicornLogger):
    """gunicorn's messages go through the root logger, so they carry the service name like every other line."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


def gateway_worker_class() -> type:
    """gunicorn's gevent worker, ending open event streams as soon as a graceful stop begins.

    Without that, every open stream would hold the worker until ``graceful_timeout`` and be cut
    then; ended at once, the browsers reconnect to another worker within their retry time.
    gunicorn imports its gevent worker in the master anyway, so importing it here costs nothing.
    """
    from gunicorn.http import wsgi
    from gunicorn.workers.ggevent import GeventWorker

    wsgi.Response = one_send_response(wsgi.Response)  # the async worker builds wsgi.Response by this name

    class GatewayWorker(GeventWorker):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            import gevent

            gevent.spawn(end_streams, self)  # out of the signal handler, like gunicorn's own handle_quit

    return GatewayWorker


def one_send_response(base: type) -> type:
    """gunicorn's response, sending the head with the first body bytes instead of on its own.

    gunicorn writes the status line and headers in one send and the body in another: two system
    calls (and two TCP segments) for every JSON answer, a sixth of the gateway's CPU in a flash
    sale's profile. Here the head is held back and goes out in the same send as the body; a
    streamed (chunked) answer, an empty one, or a head-only one goes out as before.
    """
    if getattr(base, "sends_head_with_body", False):
        return base

    class _Held:
        def __init__(self) -> None:
            self.data = b""

        def sendall(self, data: bytes) -> None:
            self.data += data

    class OneSendResponse(base):  # type: ignore[misc,valid-type]
        sends_head_with_body = True
        _hold = False
        _head: bytes | None = None

        def write(self, arg: bytes) -> None:
            self._hold = not self.headers_sent and not self.chunked and isinstance(arg, bytes) and bool(arg)
            try:
                super().write(arg)
            finally:
                self._hold = False
                self._send_held()  # a body write that sent nothing (its length reached) must not keep the head

        def send_headers(self) -> None:
            if self.headers_sent or not self._hold:
                super().send_headers()
                return
            sock, held = self.sock, _Held()
            self.sock = held
            try:
                super().send_headers()
            finally:
                self.sock = sock
            self._head = held.data

        def _emit_body(self, data: bytes) -> None:
            head, self._head = self._head, None
            super()._emit_body(data if head is None else head + data)

        def _send_held(self) -> None:
            head, self._head = self._head, None
            if head:
                self.sock.sendall(head)

    return OneSendResponse


def end_streams(worker: Any) -> None:
    from services.gateway.sse import end_streams as end

    app = getattr(worker, "wsgi", None)
    if app is not None:
        end(app)


def start_bridge(worker: Any) -> None:
    from services.gateway.context import EXTENSION

    worker.wsgi.extensions[EXTENSION].bus.start()
    frozen = freeze_startup_heap()  # the app and its models, out of the collector's full runs (see cartwheel.heap)
    log.info("worker %d: %d startup objects frozen", os.getpid(), frozen)


def close_bridge(server: Any, worker: Any) -> None:
    from services.gateway.context import EXTENSION

    app = getattr(worker, "wsgi", None)
    if app is not None:
        app.extensions[EXTENSION].bus.close(timeout=2.0)
    forget_log_handlers()


def forget_log_handlers() -> None:
    """Flush and close the log handlers now, and let ``logging`` forget them: at the worker's interpreter teardown,
    each handler collected called back into ``logging``, whose lock asked gevent's thread module for the thread's
    id after that module was gone, printing a ``TypeError`` traceback per handler at every stop (gevent issue
    #2148). With its list of handlers empty, ``logging``'s callback does nothing."""
    logging.shutdown()
    logging._handlerList.clear()  # type: ignore[attr-defined]  # what logging.shutdown walks: done already


def serve_metrics(settings: Settings) -> Callable[[Any], None]:
    """gunicorn's ``when_ready``: every worker's metrics on the metrics port (off the public port, where /metrics
    needs the admin token), as the services do on theirs, from a process of its own (metrics_port.py)."""

    def when_ready(server: Any) -> None:
        if settings.metrics_port:
            env = {**os.environ, "CARTWHEEL_METRICS_PORT": str(settings.metrics_port),
                   "CARTWHEEL_METRICS_HOST": settings.metrics_host}
            spawn([sys.executable, "-m", "services.gateway.metrics_port"], output=None, env=env)

    return when_ready


def forget_worker_metrics(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def close_unusable_connection(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    """A connection whose request body was left unread can't serve another request: close it.

    The guard's refusals (429, 408: :data:`services.gateway.guard.CLOSE`) close at once. After a 413 the body is
    left unread too; then see :func:`close_after_refused_body`.
    """
    if environ.get(CLOSE):
        req.must_close = True
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # gunicorn would read the rest of the body to reach the next request
        return
    close_after_refused_body(req, environ, resp)


def close_after_refused_body(req: Any, environ: dict[str, Any], resp: Any) -> None:
    """After a 413 the body is left unread: close the connection instead of reading it to reach the next request.

    A lingering close (stop writing, then drop what arrives: the declared body, up to :data:`LINGER_BYTES`
    and :data:`LINGER_SECONDS`) lets a client that is still sending finish and read the 413; closing with
    its bytes unread would reset the connection under it.
    """
    if resp is None or resp.status_code != 413:
        return
    req.must_close = True
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    declared = environ.get("CONTENT_LENGTH") or ""
    limit = min(int(declared), LINGER_BYTES) if declared.isdigit() else LINGER_BYTES
    deadline = time.monotonic() + LINGER_SECONDS
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_IDLE_SECONDS)
        drained = 0
        while drained < limit and time.monotonic() < deadline and (chunk := sock.recv(65536)):
            drained += len(chunk)
    except OSError:
        pass
