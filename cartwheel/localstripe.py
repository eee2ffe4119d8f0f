"""The embedded Stripe-compatible payment server (``localstripe``) for laptops and tests, as a child process.

localstripe is GPL-licensed: Cartwheel never imports it. :func:`start_localstripe` runs
``python -c BOOTSTRAP`` in a child process that imports it, binds it to 127.0.0.1 (the stock
command binds every interface) and turns off its pickle persistence (one fixed file in the
temp folder, shared by every instance on the machine, rewritten whole on every change). Given a
``state`` file (``cartwheel up``: ``var/localstripe/state.pickle``), its state is written there at
most every 0.2 s, atomically, and read back at the next start, so the intents of orders kept in
``./var`` outlive a restart (a SIGKILL loses the changes since the last write: 0.2 s, or ten
times what a write takes once the state is large, so writing costs it a tenth of its time at
most); without one it lives in memory
(the tests'). The file is a pickle, read back at start: whoever can write ``var/`` can run code in
this test server (as they can change the shop's own data there). Its output (access log, webhook
deliveries) goes to ``log_path``, or nowhere.

What localstripe 1.15.10 does, measured with stripe 16.1.0:

- Webhooks it sends (signed like Stripe, ``t=<created>,v1=<hmac>``, once: no retries, about
  1 s after the change): ``payment_intent.succeeded`` (confirm, or 3-D Secure completed),
  ``payment_intent.payment_failed`` (decline). It sends no ``charge.refunded``, no
  ``payment_intent.canceled`` and no ``payment_intent.requires_action``: the payments service
  announces what its own calls changed and does not wait for those.
- Confirming: ``confirm(payment_method=...)`` answers 500; setting the payment method with an
  update, then ``confirm`` without parameters works (and is valid on Stripe too). After a
  decline the intent cannot be confirmed again (400); Stripe allows it.
- Refunds: ``reason`` is refused (400 ``Unexpected reason``); Idempotency-Key is ignored.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType

from cartwheel.files import private_dir
from cartwheel.natsserver import PortInUse, free_port, port_is_free, spawn, terminate, wait_until_answering

log = logging.getLogger(__name__)

# Runs in the child: the only place localstripe is imported.
BOOTSTRAP = """
import asyncio, logging, os, pickle, sys, time
from aiohttp import web
from localstripe import resources, server
state = sys.argv[3] if len(sys.argv) > 3 else None
dirty = []
resources.Store.dump_to_disk = lambda self: dirty.append(1)  # never the stock file in the temp folder
if state and os.path.exists(state):
    try:
        with open(state, "rb") as f:
            resources.store.update(pickle.load(f))
    except Exception as exc:
        os.replace(state, f"{state}.unreadable-{int(time.time())}")
        print(f"cartwheel: {state} could not be read ({exc!r}); set aside, starting empty", flush=True)
def flush():
    pending = len(dirty)
    try:
        with open(state + ".tmp", "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as f:
            pickle.dump(dict(resources.store), f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(state + ".tmp", state)
    except Exception as exc:  # kept dirty: the next round tries again
        print(f"cartwheel: the payment server's state was not written ({exc!r})", flush=True)
        return
    del dirty[:pending]
async def flusher():
    took = 0.0
    while True:
        await asyncio.sleep(max(FLUSH_EVERY, 10 * took))  # writing costs a tenth of the server's time at most
        if dirty:
            began = time.monotonic()
            flush()
            took = time.monotonic() - began
async def persist(app):
    task = asyncio.get_running_loop().create_task(flusher())
    yield
    task.cancel()
    if dirty:
        flush()
if state:
    server.app.cleanup_ctx.append(persist)
access = logging.getLogger("aiohttp.access")
access.setLevel(logging.INFO)
access.addHandler(logging.StreamHandler(sys.stdout))
web.run_app(server.app, host=sys.argv[1], port=int(sys.argv[2]), access_log=access, print=None)
""".replace("FLUSH_EVERY", "0.2")


class LocalStripeError(RuntimeError):
    """localstripe is not installed, exited, or did not answer in time."""


def version() -> str:
    """The installed localstripe's version (read from its metadata, not by importing it)."""
    try:
        return metadata.version("localstripe")
    except metadata.PackageNotFoundError:
        raise LocalStripeError("localstripe is not installed: pip install 'cartwheel[local]'") from None


class LocalStripe:
    """A running localstripe: ``url`` is its API base for ``StripeClient(base_addresses={"api": url})``."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log_path: Path | None) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/js.stripe.com/v3/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # any HTTP answer: the server is up
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float = 15.0) -> None:
        what = f"localstripe on {self.url} (output: {self.log_path or 'discarded'})"
        wait_until_answering(self.process, self.answers, what, timeout, LocalStripeError)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        return terminate(self.process, grace)

    def __enter__(self) -> LocalStripe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_localstripe(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    log_path: Path | None = None,
    state: Path | None = None,
    timeout: float = 15.0,
) -> LocalStripe:
    """Start localstripe on ``host:port`` (a free port when None) and return once it answers; its state
    is kept in ``state`` when given (see the module's doc), else in memory.

    Call it from a thread that lives as long as the server should (see :func:`cartwheel.natsserver.spawn`).
    """
    release = version()
    port = port or free_port(host)
    if not port_is_free(port, host):
        raise PortInUse(host, port)
    argv = bootstrap_argv(host, port, state)
    if log_path is None:
        process = spawn(argv)
    else:
        private_dir(log_path.parent)
        with log_path.open("ab") as output:
            process = spawn(argv, output=output)
    server = LocalStripe(process, host, port, log_path)
    try:
        server.wait_ready(timeout)
    except LocalStripeError:
        server.stop()
        raise
    log.info("localstripe %s on %s (output: %s)", release, server.url, log_path or "discarded")
    return server


def bootstrap_argv(host: str, port: int, state: Path | None) -> list[str]:
    """The child's command line: localstripe on ``host:port``, its state in ``state`` (a file) if given."""
    if state is not None:
        private_dir(state.parent)
    return [sys.executable, "-c", BOOTSTRAP, host, str(port), *([str(state)] if state else [])]


def register_webhook(
    api_base: str,
    url: str,
    secret: str,
    events: Sequence[str] | None = None,
    *,
    webhook_id: str = "cartwheel",
    timeout: float = 5.0,
) -> None:
    """Have localstripe POST its events to ``url``, signed with ``secret``; only ``events`` if given.

    Registering the same ``webhook_id`` again replaces the earlier registration.
    """
    fields = [("url", url), ("secret", secret), *(("events[]", e) for e in events or ())]
    target = f"{api_base.rstrip('/')}/_config/webhooks/{urllib.parse.quote(webhook_id, safe='')}"
    body = urllib.parse.urlencode(fields).encode()
    try:
        urllib.request.urlopen(urllib.request.Request(target, data=body, method="POST"), timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        raise LocalStripeError(f"localstripe refused the webhook registration: HTTP {exc.code}") from None
