"""The embedded Stripe-compatible payment server for laptops and tests: localstripe behind Cartwheel's stand-in.

Two child processes. localstripe (GPL-licensed: Cartwheel never imports it) on a private loopback
port, and in front of it the Stripe stand-in (:mod:`cartwheel.paymentserver`, Cartwheel's own), on
the port callers use: it forwards every request to localstripe and answers itself where localstripe
cannot (Stripe's test cards and their declines, a second confirmation after a decline, parameters
localstripe refuses, browser calls with a publishable key, a rate limit for benchmarks, Checkout
Sessions and their hosted page; see its module). :func:`start_localstripe` starts both; ``url`` is
the stand-in's, ``stop()`` stops both.

localstripe runs as ``python -c BOOTSTRAP``, a child that imports it, binds it to 127.0.0.1 (the
stock command binds every interface) and turns off its pickle persistence (one fixed file in the
temp folder, shared by every instance on the machine, rewritten whole on every change). Given a
``state`` file (``cartwheel up``: ``var/localstripe/state.pickle``), its state is written there at
most every 0.2 s, atomically, and read back at the next start, so the intents of orders kept in
``./var`` outlive a restart (a SIGKILL loses the changes since the last write: 0.2 s, or ten
times what a write takes once the state is large, so writing costs it a tenth of its time at
most); without one it lives in memory
(the tests'). The file is a pickle, read back at start: whoever can write ``var/`` can run code in
this test server (as they can change the shop's own data there). The stand-in keeps its own state
beside it (``standin.json``, JSON), the same way. Their output (access log, webhook deliveries)
goes to ``log_path``, or nowhere.

What localstripe 1.15.10 does by itself, measured with stripe 16.1.0, and what the stand-in changes:

- Webhooks it sends (signed like Stripe, ``t=<created>,v1=<hmac>``, once: no retries, about
  1 s after the change): ``payment_intent.succeeded`` (confirm, or 3-D Secure completed). It sends
  no ``charge.refunded``, no ``payment_intent.canceled`` and no ``payment_intent.requires_action``:
  the payments service announces what its own calls changed and does not wait for those. The
  stand-in sends ``payment_intent.payment_failed`` (a decline, a failed 3-D Secure) itself.
- Confirming: ``confirm(payment_method=...)`` answers 500 there and a failed charge leaves the
  intent unconfirmable (400); it knows three of Stripe's test ids and declines at charge time for
  one card number. Through the stand-in, both ways of confirming work, every test card of
  :mod:`cartwheel.paymentserver.testcards` answers as at Stripe, and a second confirmation after a
  decline goes through.
- Refunds: ``reason`` is refused (400 ``Unexpected reason``); Idempotency-Key is ignored (by the
  stand-in too).
"""

from __future__ import annotations

import contextlib
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
access.addFilter(lambda record: "cartwheel-standin (re-registering)" not in record.getMessage())  # every 5 s
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


UPSTREAM_HOST = "127.0.0.1"  # localstripe is reached through the stand-in only
CONFIG_KEY = "sk_test_cartwheel_config"  # any secret-looking key: the stand-in's /_config/webhooks wants one
STANDIN_STATE = "standin.json"  # beside localstripe's state file


class LocalStripe:
    """The embedded payment server: localstripe (``process``, on a private loopback port) behind the stand-in
    (``standin``, on ``host:port``). ``url`` is the API base for ``StripeClient(base_addresses={"api": url})``."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log_path: Path | None, *,
                 standin: subprocess.Popen[bytes] | None = None, upstream_port: int | None = None) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path
        self.standin = standin
        self.upstream_port = upstream_port or port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def upstream_url(self) -> str:
        """localstripe's own address (tests only: every caller goes through :attr:`url`)."""
        return f"http://{UPSTREAM_HOST}:{self.upstream_port}"

    def answers(self) -> bool:
        return answers(self.url)

    def wait_ready(self, timeout: float = 15.0) -> None:
        what = f"localstripe on {self.upstream_url} (output: {self.log_path or 'discarded'})"
        wait_ready(self.process, self.upstream_url, what, timeout)
        if self.standin is not None:
            what = f"the Stripe stand-in on {self.url} (output: {self.log_path or 'discarded'})"
            wait_ready(self.standin, self.url, what, timeout)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM the stand-in, then localstripe (SIGKILL after ``grace`` seconds); the first non-zero exit code."""
        codes = [terminate(self.standin, grace)] if self.standin is not None else []
        codes.append(terminate(self.process, grace))
        return next((code for code in codes if code), 0)

    def __enter__(self) -> LocalStripe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def answers(url: str) -> bool:
    """Whether the server at ``url`` answers HTTP (any status)."""
    try:
        urllib.request.urlopen(f"{url}/js.stripe.com/v3/", timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False
    return True


def wait_ready(process: subprocess.Popen[bytes], url: str, what: str, timeout: float = 15.0) -> None:
    """Return once ``process`` answers at ``url``; :class:`LocalStripeError` if it exits or ``timeout`` passes."""
    wait_until_answering(process, lambda: answers(url), what, timeout, LocalStripeError)


def start_localstripe(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    log_path: Path | None = None,
    state: Path | None = None,
    timeout: float = 15.0,
    rate_limit: float | None = None,
    min_session_seconds: int | None = None,
) -> LocalStripe:
    """Start localstripe on a free loopback port and the stand-in in front of it on ``host:port`` (a free port
    when None); return once both answer. Their state is kept in ``state`` and a ``standin.json`` beside it when
    given (see the module's doc), else in memory. ``rate_limit``: the stand-in answers 429 above that many API
    requests a second. ``min_session_seconds``: the least time ahead a Checkout Session's ``expires_at`` may be
    (Stripe's 30 minutes when None; tests give a few seconds to see sessions expire).

    Call it from a thread that lives as long as the server should (see :func:`cartwheel.natsserver.spawn`).
    """
    release = version()
    port = port or free_port(host)
    if not port_is_free(port, host):
        raise PortInUse(host, port)
    upstream_port = free_port(UPSTREAM_HOST)
    if log_path is not None:
        private_dir(log_path.parent)
    with log_path.open("ab") if log_path else contextlib.nullcontext() as output:
        into = output if output is not None else subprocess.DEVNULL
        process = spawn(bootstrap_argv(UPSTREAM_HOST, upstream_port, state), output=into)
        server = LocalStripe(process, host, port, log_path, upstream_port=upstream_port)
        try:
            wait_ready(process, server.upstream_url, f"localstripe on {server.upstream_url}", timeout)
            standin = standin_state(state)
            argv = standin_argv(host, port, server.upstream_url, standin, rate_limit, min_session_seconds)
            server.standin = spawn(argv, output=into)
            server.wait_ready(timeout)
        except LocalStripeError:
            server.stop()
            raise
    log.info("localstripe %s on %s behind the Stripe stand-in on %s (output: %s)", release, server.upstream_url,
             server.url, log_path or "discarded")
    return server


def bootstrap_argv(host: str, port: int, state: Path | None) -> list[str]:
    """localstripe's command line: on ``host:port``, its state in ``state`` (a file) if given."""
    if state is not None:
        private_dir(state.parent)
    return [sys.executable, "-c", BOOTSTRAP, host, str(port), *([str(state)] if state else [])]


def standin_state(state: Path | None) -> Path | None:
    """The stand-in's state file for localstripe's ``state``: ``standin.json`` beside it."""
    return state.with_name(STANDIN_STATE) if state is not None else None


def standin_argv(host: str, port: int, upstream: str, state: Path | None = None,
                 rate_limit: float | None = None, min_session_seconds: int | None = None) -> list[str]:
    """The stand-in's command line: on ``host:port`` in front of localstripe at ``upstream``."""
    if state is not None:
        private_dir(state.parent)
    return [sys.executable, "-m", "cartwheel.paymentserver", "--host", host, "--port", str(port),
            "--upstream", upstream, *(["--state", str(state)] if state else []),
            *(["--rate-limit", f"{rate_limit:g}"] if rate_limit else []),
            *(["--min-session-seconds", str(min_session_seconds)] if min_session_seconds is not None else [])]


def register_webhook(
    api_base: str,
    url: str,
    secret: str,
    events: Sequence[str] | None = None,
    *,
    webhook_id: str = "cartwheel",
    timeout: float = 5.0,
) -> None:
    """Have the embedded payment server POST its events to ``url``, signed with ``secret``; only ``events`` if
    given. ``api_base`` is the stand-in's: it keeps the registration for its own events and passes it to
    localstripe for localstripe's.

    Registering the same ``webhook_id`` again replaces the earlier registration.
    """
    fields = [("url", url), ("secret", secret), *(("events[]", e) for e in events or ())]
    target = f"{api_base.rstrip('/')}/_config/webhooks/{urllib.parse.quote(webhook_id, safe='')}"
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(target, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {CONFIG_KEY}"})  # the stand-in asks for one
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        raise LocalStripeError(f"localstripe refused the webhook registration: HTTP {exc.code}") from None
