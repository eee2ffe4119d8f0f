"""``cartwheel up``: nats-server, migrations, every service and the gateway on one machine.

:class:`System` is the whole shop as child processes; ``cartwheel up`` and the end-to-end test
fixture both run it. Each child's stdout and stderr are streamed line by line behind a
fixed-width name (coloured on a terminal unless ``NO_COLOR`` is set).

When a child dies on its own, the supervisor says so loudly (name and exit code), restarts
nothing and keeps the others running; ``up`` exits 1 once nothing is left running. SIGINT or
SIGTERM stops services and gateway first, then nats-server, SIGKILLs stragglers, all within
10 s, and ``up`` exits 0.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import TextIO
from urllib.parse import urlsplit

from pydantic import SecretStr

from cartwheel import natsauth
from cartwheel.files import private_dir, write_private
from cartwheel.natsserver import (
    NatsServer,
    NatsServerError,
    PortInUse,
    free_port,
    port_is_free,
    signal_group,
    spawn,
)
from cartwheel.settings import SERVICES, Settings

NATS = "nats-server"
GATEWAY = "gateway"
PAYMENT_SERVER = "localstripe"
NAMES: tuple[str, ...] = (NATS, GATEWAY, *SERVICES, PAYMENT_SERVER)
EMBEDDED_STRIPE_KEY = "sk_test_cartwheel_embedded"  # localstripe takes any key that looks like a test key
COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
SEEDED_MARKER = ".demo-seeded"


class StartupError(RuntimeError):
    """The shop did not come up; the message says what failed (and its last log lines)."""


class PortTaken(StartupError):
    pass


class StartupInterrupted(StartupError):
    pass


def use_colour(stream: TextIO, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Colours only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Console:
    """Serialised output: the supervisor's own lines and every child's lines behind its name."""

    def __init__(self, out: TextIO, names: Sequence[str] = NAMES, *, colour: bool = False) -> None:
        self.out = out
        self.width = max(len(name) for name in names)
        self.colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)} if colour else {}
        self.colour = colour
        self._lock = threading.Lock()

    def prefix(self, name: str, line: str) -> str:
        label = f"{name:<{self.width}} |"
        if name in self.colours:
            label = f"\033[{self.colours[name]}m{label}\033[0m"
        return f"{label} {line}"

    def child_line(self, name: str, line: str) -> None:
        self.write(self.prefix(name, line))

    def say(self, message: str) -> None:
        self.write(f"\033[1mcartwheel:\033[0m {message}" if self.colour else f"cartwheel: {message}")

    def alarm(self, message: str) -> None:
        self.write(f"\033[1;31mcartwheel: {message}\033[0m" if self.colour else f"cartwheel: {message}")

    def write(self, text: str) -> None:
        with self._lock:
            try:
                self.out.write(text + "\n")
                self.out.flush()
            except (OSError, ValueError):  # closed or broken output must not kill the supervisor
                pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    pump: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Children:
    """Named child processes: output pumped to a :class:`Console`, unexpected exits reported, ordered stop."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.all: dict[str, Child] = {}
        self.unexpected_exits: dict[str, int] = {}
        self.stopping = threading.Event()
        self.all_exited = threading.Event()
        self._monitor: threading.Thread | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        return self.adopt(name, spawn(argv, output=subprocess.PIPE, env=env))

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> Child:
        """Take over a started process whose stdout is a pipe."""
        child = Child(name, process)
        child.pump = threading.Thread(target=self._pump, args=(child,), name=f"log-{name}", daemon=True)
        child.pump.start()
        self.all[name] = child
        return child

    def watch(self) -> None:
        """From now on, report children that exit on their own (a thread polls them)."""
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="child-monitor", daemon=True)
            self._monitor.start()

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        for raw in iter(child.process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            child.tail.append(line)
            self.console.child_line(child.name, line)

    def _watch(self) -> None:
        reported: set[str] = set()
        while not self.stopping.wait(0.2):
            for child in list(self.all.values()):
                code = child.process.poll()
                if code is None or child.name in reported or self.stopping.is_set():
                    continue
                reported.add(child.name)
                self.unexpected_exits[child.name] = code
                self.console.alarm(
                    f"{child.name} exited unexpectedly ({describe_exit(code)}); nothing is restarted, "
                    "the rest keep running (Ctrl-C stops all)"
                )
            if self.all and len(reported) == len(self.all):
                self.all_exited.set()

    def last_lines(self, name: str, count: int = 15) -> str:
        lines = list(self.all[name].tail)[-count:] if name in self.all else []
        body = "\n".join(f"    {line}" for line in lines) or "    (no output)"
        return f"  last lines of {name}:\n{body}"

    def stop(self, phases: Sequence[Sequence[str]], timeout: float = 10.0) -> None:
        """SIGTERM the named children phase by phase, SIGKILL what outlives its share; all within ``timeout``."""
        self.stopping.set()
        deadline = time.monotonic() + timeout - 0.5
        for i, names in enumerate(phases):
            left = len(phases) - i
            # later phases keep 3.5 s each; the last keeps 1 s to reap what SIGKILL leaves
            kill_at = deadline - (3.5 * (left - 1) if left > 1 else 1.0)
            self._terminate([self.all[n] for n in names if n in self.all], kill_at)
        for child in self.all.values():
            if child.pump is not None:
                child.pump.join(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def _terminate(self, children: Iterable[Child], kill_at: float) -> None:
        children = [child for child in children if child.alive]
        for child in children:
            signal_group(child.process, signal.SIGTERM)
        while any(c.alive for c in children) and time.monotonic() < kill_at:
            time.sleep(0.05)
        for child in children:
            if child.alive:
                self.console.alarm(f"{child.name} did not stop in time; killing it")
            signal_group(child.process, signal.SIGKILL)  # also sweeps what a dead leader left in its group
        for child in children:
            try:
                child.process.wait(1.0)
            except subprocess.TimeoutExpired:
                self.console.alarm(f"{child.name} (pid {child.process.pid}) survived SIGKILL")


SECRET_OF: dict[str, str] = {"stripe_secret_key": "payments", "stripe_webhook_secret": "payments"}
"""Settings only one process may hold: the Stripe key and webhook secret reach payments, never the
internet-facing gateway or the other services."""


def child_env(settings: Settings, metrics_port: int, role: str) -> dict[str, str]:
    """This process's environment plus every setting as ``CARTWHEEL_<FIELD>``, as the child ``role`` reads
    them; a secret of another role (:data:`SECRET_OF`) is left out, even one this process inherited."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        key = f"CARTWHEEL_{name.upper()}"
        value = getattr(settings, name)
        if value is None or SECRET_OF.get(name, role) != role:
            env.pop(key, None)
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    env.pop("CARTWHEEL_NATS_NKEY_FILE", None)  # each child signs in as itself: var/nats-keys/<role>.nk
    for service in SERVICES:
        env[f"CARTWHEEL_{service.upper()}_DATABASE_URL"] = settings.database_url(service)
    env["CARTWHEEL_METRICS_PORT"] = str(metrics_port)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the prefixer as they are written
    return env


def _url_host(host: str) -> str:
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"[{host}]" if ":" in host else host


class System:
    """The whole shop as child processes of this one.

    ``System(settings)`` then :meth:`start` (or ``with System(settings) as shop:``) checks ports,
    starts nats-server (when ``settings.embedded_nats``), migrates, starts services and gateway,
    waits until all are ready and seeds the demo catalog once. :meth:`wait` blocks until
    :meth:`request_stop` or until every child has exited; :meth:`stop` stops all within 10 s.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        out: TextIO | None = None,
        colour: bool | None = None,
        ready_timeout: float = 90.0,
        seed: bool = True,
    ) -> None:
        update: dict[str, object] = {"var_dir": settings.var_dir.resolve()}
        if "cookie_secure" not in settings.model_fields_set:
            update["cookie_secure"] = False  # the gateway serves plain http here: a Secure cookie never comes back
        # No Stripe key: payments talks to an embedded localstripe, whose webhooks come back signed.
        self.embedded_stripe = settings.stripe_secret_key is None
        if self.embedded_stripe:
            update |= {
                "stripe_secret_key": SecretStr(EMBEDDED_STRIPE_KEY),
                "stripe_api_base": f"http://127.0.0.1:{free_port()}",
                "stripe_webhook_secret": SecretStr("whsec_" + secrets.token_urlsafe(24)),
            }
        resolved = settings.model_copy(update=update)
        self.settings = resolved.with_secrets()
        self.var_dir = self.settings.var_dir
        self.ready_timeout = ready_timeout
        self.seed = seed
        self.base_url = f"http://{_url_host(self.settings.gateway_host)}:{self.settings.gateway_port}"
        token = self.settings.admin_token
        self.admin_token = token.get_secret_value() if token else ""
        self.nats_url = self.settings.nats_url
        stream = out or sys.stdout
        self.console = Console(stream, colour=use_colour(stream) if colour is None else colour)
        self.children = Children(self.console)
        self._stop_requested = threading.Event()
        self._stopped = False
        nats = urlsplit(self.settings.nats_servers[0])
        self._nats_port = nats.port or 4222
        self.nats: NatsServer | None = self._embedded_nats() if self.settings.embedded_nats else None

    def _embedded_nats(self) -> NatsServer:
        """The embedded server, which admits only the shop's own processes: a seed for each in var/nats-keys/
        (made at the first start), their public keys and permissions in its config."""
        seeds = natsauth.ensure_keys(self.var_dir / natsauth.KEYS_DIR)
        public = {identity: natsauth.public_key(seed) for identity, seed in seeds.items()}
        return NatsServer(self.var_dir / "nats", self._nats_port, authorization=natsauth.authorization(public),
                          probe_seed=seeds[natsauth.ADMIN])

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bring everything up; on failure stop what was started and raise :class:`StartupError`."""
        started = time.monotonic()
        self._check_ports()
        try:
            private_dir(self.var_dir, narrow=True)
            if self.nats is not None:
                self._start_nats()
                self._declare_streams()
            if self.embedded_stripe:
                self._start_payment_server()
            # The gateway needs its own database only: let it boot while the services' migrations run.
            self._migrate([GATEWAY])
            self._start(GATEWAY, [sys.executable, "-m", "cartwheel.cli", "run", "gateway"], self._metrics_port(None))
            self._migrate(SERVICES)
            for i, name in enumerate(SERVICES):
                self._start(name, [sys.executable, "-m", f"services.{name}"], self._metrics_port(i))
            self._wait_ready(started + self.ready_timeout)
            if self.embedded_stripe:
                self._register_webhook()
            if self.seed:
                self._seed()
        except BaseException:
            self.stop()
            raise
        self.children.watch()
        self.console.say(f"ready in {time.monotonic() - started:.1f} s")

    def request_stop(self) -> None:
        """Make :meth:`wait` return and an ongoing :meth:`start` give up; safe from a signal handler."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def stopping(self) -> bool:
        return self.children.stopping.is_set()

    @property
    def unexpected_exits(self) -> dict[str, int]:
        """Children that exited on their own: name → exit code (negative: killed by that signal)."""
        return dict(self.children.unexpected_exits)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested or every child has exited (True), or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self._stop_requested.is_set() or self.children.all_exited.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._stop_requested.wait(0.2)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Services and gateway first (SIGTERM), then nats-server; SIGKILL stragglers; within ``timeout``."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        if any(child.alive for child in self.children.all.values()):
            self.console.say("stopping…")
        self.children.stop([[GATEWAY, *SERVICES], [NATS, PAYMENT_SERVER]], timeout)
        self.console.say("stopped")

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def banner(self) -> str:
        payments = "; test payments: `cartwheel demo-checkout`" if self.embedded_stripe else ""
        return f"the shop is at {self.base_url}/  (admin token: {self.admin_token}{payments}; Ctrl-C stops all)"

    # -- steps --------------------------------------------------------------------------

    def _check_ports(self) -> None:
        host = self.settings.gateway_host
        if not port_is_free(self.settings.gateway_port, host):
            raise PortTaken(_port_taken(self.settings.gateway_port, "gateway", "CARTWHEEL_GATEWAY_PORT"))
        if self.nats is not None and not port_is_free(self._nats_port, self.nats.host):
            raise PortTaken(_port_taken(self._nats_port, NATS, "CARTWHEEL_NATS_URL"))

    def _start_nats(self) -> None:
        assert self.nats is not None
        self._step(f"starting {NATS} (JetStream in {self.nats.data_dir})…")
        try:
            self.nats.start(output=subprocess.PIPE, wait=False)
        except PortInUse as exc:
            raise PortTaken(_port_taken(exc.port, NATS, "CARTWHEEL_NATS_URL")) from None
        assert self.nats.process is not None
        self.children.adopt(NATS, self.nats.process)
        try:
            self.nats.wait_ready()
        except NatsServerError as exc:
            raise StartupError(f"{exc}\n{self.children.last_lines(NATS)}") from None

    def _declare_streams(self) -> None:
        """As admin, before any service: streams and buckets as this version declares them (services may only
        create what is missing)."""
        import asyncio

        from cartwheel.bus import declare_streams

        self._step("declaring streams and buckets…")
        try:
            asyncio.run(declare_streams(self.settings))
        except Exception as exc:
            raise StartupError(f"could not declare the streams and buckets: {exc!r}") from None

    def _start_payment_server(self) -> None:
        """localstripe on loopback, in memory only: a checkout with test cards works offline."""
        from cartwheel import localstripe

        api = urlsplit(self.settings.stripe_api_base or "")
        host, port = api.hostname or "127.0.0.1", api.port or free_port()
        self._step(f"starting {PAYMENT_SERVER} {localstripe.version()} (the embedded payment server) on {host}:{port}…")
        if not port_is_free(port, host):
            raise PortTaken(_port_taken(port, PAYMENT_SERVER, "CARTWHEEL_STRIPE_API_BASE"))
        argv = localstripe.bootstrap_argv(host, port, self.settings.var_dir / "localstripe" / "state.pickle")
        child = self.children.spawn(PAYMENT_SERVER, argv)
        try:
            localstripe.LocalStripe(child.process, host, port, None).wait_ready()
        except localstripe.LocalStripeError as exc:
            raise StartupError(f"{exc}\n{self.children.last_lines(PAYMENT_SERVER)}") from None

    def _register_webhook(self) -> None:
        from cartwheel.localstripe import LocalStripeError, register_webhook

        assert self.settings.stripe_api_base and self.settings.stripe_webhook_secret
        url = f"{self.base_url}/webhooks/stripe"
        try:
            register_webhook(self.settings.stripe_api_base, url, self.settings.stripe_webhook_secret.get_secret_value())
        except (LocalStripeError, OSError) as exc:
            raise StartupError(f"registering the webhook with {PAYMENT_SERVER} failed: {exc}") from None
        self.console.say(f"{PAYMENT_SERVER} sends signed webhooks to {url}")

    def _start(self, name: str, argv: list[str], metrics_port: int) -> None:
        self._step(f"starting {name}…")
        self.children.spawn(name, argv, child_env(self.settings, metrics_port, name))

    def _metrics_port(self, index: int | None) -> int:
        base = self.settings.metrics_port
        if not base:
            return 0
        return base if index is None else base + index + 1

    def _migrate(self, names: Sequence[str]) -> None:
        from cartwheel.db import migrate

        for name in names:
            self._step(f"migrating {name}…")
            try:
                migrate(name, self.settings.database_url(name))
            except Exception as exc:
                self.console.write("".join(traceback.format_exception(exc)).rstrip())
                raise StartupError(f"migrating {name} failed: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        self._step("waiting for the gateway and the services…")
        gateway_status = "not asked yet"
        services_ok = False
        while True:
            self._raise_if_a_child_died()
            if gateway_status != "200":
                gateway_status = self._readyz()
            if not services_ok:
                services_ok = self._healthy(list(SERVICES))
            if gateway_status == "200" and services_ok:
                return
            if time.monotonic() > deadline:
                raise StartupError(self._not_ready(gateway_status, services_ok))
            if self._stop_requested.wait(0.25):
                raise StartupInterrupted("interrupted while starting")

    def _healthy(self, names: list[str]) -> bool:
        from cartwheel.health import check_services

        try:
            return check_services(self.settings, names, quiet=True)
        except Exception:  # NATS not there yet, or a service half up: ask again later
            return False

    def _readyz(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                return str(response.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    def _not_ready(self, gateway_status: str, services_ok: bool) -> str:
        failed = [] if gateway_status == "200" else [GATEWAY]
        if not services_ok:
            failed += [name for name in SERVICES if not self._healthy([name])]
        what = ", ".join(
            f"{GATEWAY} (GET /readyz: {gateway_status})" if name == GATEWAY else f"{name} (no healthy answer over NATS)"
            for name in failed
        )
        lines = "\n".join(self.children.last_lines(name) for name in failed)
        return f"not ready after {self.ready_timeout:.0f} s: {what or 'unknown'}\n{lines}"

    def _raise_if_a_child_died(self) -> None:
        for child in self.children.all.values():
            code = child.process.poll()
            if code is not None:
                raise StartupError(
                    f"{child.name} exited while starting ({describe_exit(code)})\n"
                    f"{self.children.last_lines(child.name)}"
                )

    def _seed(self) -> None:
        marker = self.var_dir / SEEDED_MARKER
        if marker.exists():
            return
        from services.catalog.seed import seed_demo

        self._step("seeding the demo catalog…")
        try:
            created = seed_demo(self.settings)
        except Exception as exc:
            self.console.write("".join(traceback.format_exception(exc)).rstrip())
            raise StartupError(f"seeding the demo catalog failed: {exc}") from exc
        write_private(marker, f"{created} products created by `cartwheel up`\n".encode())
        self.console.say(f"demo catalog seeded ({created} products)")

    def _step(self, message: str) -> None:
        if self._stop_requested.is_set():
            raise StartupInterrupted("interrupted while starting")
        self._raise_if_a_child_died()
        self.console.say(message)


def _port_taken(port: int, what: str, variable: str) -> str:
    return f"port {port} is already in use ({what}); set {variable} or stop the other program"


def up(settings: Settings) -> int:
    """``cartwheel up``: run the shop until SIGINT/SIGTERM (exit 0); 1 when it cannot start or everything died."""
    system = System(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if system.stopping:
            return  # stop() is already bounded to 10 s
        if system.stop_requested:
            raise KeyboardInterrupt  # a second Ctrl-C breaks out of a step that hangs
        system.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        system.start()
    except PortTaken as exc:
        print(f"cartwheel: {exc}", file=sys.stderr)
        return 1
    except (StartupInterrupted, KeyboardInterrupt):
        return 0
    except StartupError as exc:
        system.console.alarm(str(exc))
        return 1
    system.console.say(system.banner())
    system.wait()
    interrupted = system.stop_requested
    system.stop()
    return 0 if interrupted else 1
