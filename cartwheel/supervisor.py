"""``cartwheel up``: nats-server, migrations, every service and the gateway on one machine.

:class:`System` is the whole shop as child processes; ``cartwheel up`` and the end-to-end test
fixture both run it. Each child's stdout and stderr are streamed line by line behind a
fixed-width name (coloured on a terminal unless ``NO_COLOR`` is set).

When a child dies on its own, the supervisor says so loudly (name and exit code) and starts it
again after a pause that doubles with each crash in a row (1 s up to 30 s; a child that ran 10 s
starts over at 1 s), for as long as ``up`` runs, keeping the others running. SIGINT or SIGTERM
stops the gateway first (the requests it holds are answered), then the services, then
nats-server, SIGKILLs stragglers, all within 10 s, and ``up`` exits 0.

``cartwheel up --cluster`` runs three nats-servers as one JetStream cluster on loopback (every
stream, bucket and object store at three replicas) and ``--scale inventory=3,cart=2`` runs
replicas of services; ``--postgres URL`` puts every database on that PostgreSQL server.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cartwheel import natsauth
from cartwheel.files import private_dir, write_private
from cartwheel.natsserver import (
    NatsServer,
    NatsServerError,
    PortInUse,
    cluster_nodes,
    free_port,
    port_is_free,
    signal_group,
    spawn,
)
from cartwheel.settings import DATABASES, SERVICES, Settings

NATS = "nats-server"
GATEWAY = "gateway"
PAYMENT_SERVER = "localstripe"
PAYMENT_STANDIN = "standin"  # the Stripe stand-in in front of localstripe (cartwheel/paymentserver)
NAMES: tuple[str, ...] = (NATS, GATEWAY, *SERVICES, PAYMENT_SERVER, PAYMENT_STANDIN)
EMBEDDED_STRIPE_KEY = "sk_test_cartwheel_embedded"  # the embedded server takes any key that looks like a test key
EMBEDDED_PUBLISHABLE_KEY = "pk_test_cartwheel_embedded"  # the storefront's Stripe.js calls the stand-in with it
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


RESTART_FIRST = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 10.0
"""Seconds a child must run for its next crash to count as the first again: one that fails as it starts waits
longer and longer, one killed after it ran a while comes back at once (at 60 s, replicas SIGKILLed every second
waited 8 and 16 s by the third sale, all of them down together: 16 s unanswered)."""


START_ATTEMPTS = 3
"""Times in a row a child may exit while the shop starts before the start is given up (restarted between them)."""


def restart_delay(crashes: int) -> float:
    """Seconds before a child that crashed ``crashes`` times in a row starts again."""
    return min(RESTART_FIRST * 2 ** min(crashes - 1, 16), RESTART_MAX)


Respawn = Callable[[], "subprocess.Popen[bytes]"]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    pump: threading.Thread | None = None
    respawn: Respawn | None = None
    """How to start it again after a crash (None: it is left down)."""
    started_at: float = field(default_factory=time.monotonic)
    crashes: int = 0  # in a row: the restart's backoff
    restarts: int = 0
    exit_seen: bool = False  # this process's exit was reported
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Children:
    """Named child processes: output pumped to a :class:`Console`, crashes reported and restarted with backoff,
    ordered stop."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.all: dict[str, Child] = {}
        self.unexpected_exits: dict[str, int] = {}
        self.stopping = threading.Event()
        self.all_exited = threading.Event()
        self._stopped = threading.Event()  # the watcher ends only now: the kernel stops what a thread started
        self._lock = threading.Lock()  # a restart and the stop never interleave
        self._monitor: threading.Thread | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, *, restart: bool = False) -> Child:
        """Start ``argv`` as ``name``; with ``restart``, start it again whenever it crashes."""
        def start() -> subprocess.Popen[bytes]:
            return spawn(argv, output=subprocess.PIPE, env=env)

        return self.adopt(name, start(), respawn=start if restart else None)

    def adopt(self, name: str, process: subprocess.Popen[bytes], *, respawn: Respawn | None = None) -> Child:
        """Take over a started process whose stdout is a pipe; ``respawn`` starts it again after a crash."""
        child = Child(name, process, respawn=respawn)
        self._pump_output(child)
        self.all[name] = child
        return child

    def _pump_output(self, child: Child) -> None:
        child.pump = threading.Thread(target=self._pump, args=(child, child.process), name=f"log-{child.name}",
                                      daemon=True)
        child.pump.start()

    @property
    def watching(self) -> bool:
        """True once :meth:`watch` was called: exits are reported and children restarted."""
        return self._monitor is not None

    def watch(self) -> None:
        """From now on, report children that exit on their own and restart them (a thread polls them)."""
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="child-monitor", daemon=True)
            self._monitor.start()

    def _pump(self, child: Child, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            child.tail.append(line)
            self.console.child_line(child.name, line)

    def _watch(self) -> None:
        while not self._stopped.wait(0.2):
            if self.stopping.is_set():
                continue  # alive until the stop is done: children it restarted die with this thread
            now = time.monotonic()
            for child in list(self.all.values()):
                code = child.process.poll()
                if code is None:
                    continue
                if not child.exit_seen:
                    self._crashed(child, code, now)
                elif child.restart_at is not None and now >= child.restart_at:
                    self._restart(child)
            if self.all and all(not c.alive and c.restart_at is None for c in self.all.values()):
                self.all_exited.set()

    def _crashed(self, child: Child, code: int, now: float) -> None:
        child.exit_seen = True
        self.unexpected_exits[child.name] = code
        signal_group(child.process, signal.SIGKILL)  # what it leaves behind (gunicorn's workers, on its socket)
        if child.respawn is None:
            self.console.alarm(f"{child.name} exited unexpectedly ({describe_exit(code)}); it is not restarted, "
                               "the rest keep running (Ctrl-C stops all)")
            return
        child.crashes = 1 if now - child.started_at >= STABLE_AFTER else child.crashes + 1
        delay = restart_delay(child.crashes)
        child.restart_at = now + delay
        self.console.alarm(f"{child.name} exited unexpectedly ({describe_exit(code)}); restarting it in {delay:.0f} s"
                           f" (crash {child.crashes} in a row)")

    def _restart(self, child: Child) -> None:
        assert child.respawn is not None
        with self._lock:
            if self.stopping.is_set():
                return
            child.restart_at = None
            try:
                process = child.respawn()
            except Exception as exc:  # a port still taken, a binary gone: try again later
                child.crashes += 1
                child.restart_at = time.monotonic() + restart_delay(child.crashes)
                self.console.alarm(f"{child.name} could not be restarted ({exc}); trying again in "
                                   f"{restart_delay(child.crashes):.0f} s")
                return
            child.process, child.exit_seen, child.started_at = process, False, time.monotonic()
            child.restarts += 1
            self._pump_output(child)
        self.console.say(f"{child.name} restarted (pid {process.pid}, restart {child.restarts})")

    def last_lines(self, name: str, count: int = 15) -> str:
        lines = list(self.all[name].tail)[-count:] if name in self.all else []
        body = "\n".join(f"    {line}" for line in lines) or "    (no output)"
        return f"  last lines of {name}:\n{body}"

    def stop(self, phases: Sequence[Sequence[str]], timeout: float = 10.0) -> None:
        """SIGTERM the named children phase by phase, SIGKILL what outlives its share; all within ``timeout``."""
        with self._lock:
            self.stopping.set()
        try:
            self._stop(phases, timeout)
        finally:
            self._stopped.set()

    def _stop(self, phases: Sequence[Sequence[str]], timeout: float) -> None:
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


SECRET_OF: dict[str, str] = {"stripe_secret_key": "payments", "stripe_webhook_secret": "payments",
                             "smtp_url": "notifications"}
"""Settings only one process may hold: the Stripe key and webhook secret reach payments, the mail server's
password notifications, never the internet-facing gateway or the other services."""


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
        cluster: bool = False,
        scale: Mapping[str, int] | None = None,
        postgres: str | None = None,
    ) -> None:
        """``cluster``: three nats-servers as one JetStream cluster (streams at three replicas) instead of one;
        ``scale``: replicas of each named service (one by default); ``postgres``: a PostgreSQL server's URL, on
        which every service and the gateway get a database of their own (``cartwheel_<name>``, made if missing)."""
        update: dict[str, object] = {"var_dir": settings.var_dir.resolve()}
        if "cookie_secure" not in settings.model_fields_set:
            update["cookie_secure"] = False  # the gateway serves plain http here: a Secure cookie never comes back
        # No Stripe key: payments talks to the embedded payment server, whose webhooks come back signed, and the
        # storefront takes cards with the stand-in's own Stripe.js, from the same server.
        self.embedded_stripe = settings.stripe_secret_key is None
        if self.embedded_stripe:
            api_base = f"http://127.0.0.1:{free_port()}"
            update |= {
                "stripe_secret_key": SecretStr(EMBEDDED_STRIPE_KEY),
                "stripe_api_base": api_base,
                "stripe_webhook_secret": SecretStr("whsec_" + secrets.token_urlsafe(24)),
                "stripe_publishable_key": EMBEDDED_PUBLISHABLE_KEY,
                "stripe_js_url": f"{api_base}/js.stripe.com/v3/",
            }
        self.postgres = postgres
        if postgres:
            try:
                update |= {f"{name}_database_url": postgres_database(postgres, name) for name in DATABASES}
                update |= {"control_database_url": postgres_database(postgres, "control"),
                           "tenant_database_url": postgres_database(postgres, "{service}__{tenant}")}
            except ArgumentError:
                raise StartupError(f"--postgres {postgres!r} is not a database URL "
                                   "(postgresql://USER@HOST:PORT/DATABASE)") from None
        nats_port = urlsplit(settings.nats_servers[0]).port or 4222
        self._node_ports = [nats_port + i for i in range(CLUSTER_NODES if cluster else 1)]
        if cluster:
            if not settings.embedded_nats:
                raise StartupError("--cluster starts its own nats-servers: unset CARTWHEEL_EMBEDDED_NATS=false")
            update |= {"nats_url": ",".join(f"nats://127.0.0.1:{port}" for port in self._node_ports),
                       "stream_replicas": CLUSTER_NODES}
        try:
            check_scale(scale or {})
        except ValueError as exc:
            raise StartupError(f"--scale {exc}") from None
        self.replicas = {name: _replica_names(name, (scale or {}).get(name, 1)) for name in SERVICES}
        self._ports: dict[str, list[int]] = {}  # service → its replicas' metrics ports
        update["payments_replicas"] = len(self.replicas["payments"])  # each takes its share of Stripe's rate
        if "public_url" not in settings.model_fields_set:  # where Stripe's checkout page sends buyers back
            update["public_url"] = f"http://{_url_host(settings.gateway_host)}:{settings.gateway_port}"
        resolved = settings.model_copy(update=update)
        self.settings = resolved.with_secrets()
        self.var_dir = self.settings.var_dir
        self.ready_timeout = ready_timeout
        self.seed = seed
        self.base_url = f"http://{_url_host(self.settings.gateway_host)}:{self.settings.gateway_port}"
        token = self.settings.admin_token
        self.admin_token = token.get_secret_value() if token else ""
        self.nats_url = self.settings.nats_url
        self.nats_nodes: dict[str, NatsServer] = self._embedded_nats(cluster) if self.settings.embedded_nats else {}
        stream = out or sys.stdout
        names = (*self.nats_nodes, GATEWAY, *self.service_children, PAYMENT_SERVER, PAYMENT_STANDIN)
        self.console = Console(stream, names, colour=use_colour(stream) if colour is None else colour)
        self.children = Children(self.console)
        self._stop_requested = threading.Event()
        self._stopped = False

    @property
    def nats(self) -> NatsServer | None:
        """The (first) embedded nats-server, if any."""
        return next(iter(self.nats_nodes.values()), None)

    @property
    def service_children(self) -> list[str]:
        """Every service process's name: the service's, or ``inventory-2`` for its second replica."""
        return [child for name in SERVICES for child in self.replicas[name]]

    def _embedded_nats(self, cluster: bool) -> dict[str, NatsServer]:
        """The embedded server, or the three of a cluster, which admit only the shop's own processes: a seed for
        each in var/nats-keys/ (made at the first start), their public keys and permissions in their config."""
        seeds = natsauth.ensure_keys(self.var_dir / natsauth.KEYS_DIR)
        public = {identity: natsauth.public_key(seed) for identity, seed in seeds.items()}
        options: dict[str, Any] = {"authorization": natsauth.authorization(public), "probe_seed": seeds[natsauth.ADMIN]}
        if not cluster:
            return {NATS: NatsServer(self.var_dir / "nats", self._node_ports[0], **options)}
        nodes = cluster_nodes(self.var_dir / "nats-cluster", self._node_ports,
                              [free_port() for _ in self._node_ports], **options)
        return {f"{NATS}-{i}": node for i, node in enumerate(nodes, start=1)}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bring everything up; on failure stop what was started and raise :class:`StartupError`."""
        started = time.monotonic()
        self._check_ports()
        try:
            private_dir(self.var_dir, narrow=True)
            if self.postgres:
                self._make_databases()
            if self.nats_nodes:
                self._start_nats()
                self._declare_streams()
            # From here a child that exits while starting is started again, as after startup: a NATS request that
            # timed out in a new cluster's first seconds costs a restart, not the shop (see _raise_if_a_child_died).
            self.children.watch()
            if self.embedded_stripe:
                self._start_payment_server()
            # The gateway needs its own database only: let it boot while the services' migrations run.
            self._migrate([GATEWAY])
            self._start(GATEWAY, [sys.executable, "-m", "cartwheel.cli", "run", "gateway"], self._metrics_port(None))
            self._migrate(SERVICES)
            self._tenants()
            extra = len(SERVICES)  # second and later replicas' metrics ports come after every first one's
            for i, name in enumerate(SERVICES):
                for r, child in enumerate(self.replicas[name]):
                    extra += r > 0
                    self._start(child, [sys.executable, "-m", f"services.{name}"],
                                self._metrics_port(extra if r else i), role=name)
            self._write_ports()
            self._wait_ready(started + self.ready_timeout)
            if self.embedded_stripe:
                self._register_webhook()
            if self.seed:
                self._seed()
        except BaseException:
            self.stop()
            raise
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
        """Drain: the gateway first (it takes no new request and answers those in hand, which need the services),
        then the services (they finish what they hold), then nats-server; SIGTERM each, SIGKILL stragglers; all
        within ``timeout``. (Stopped together, an in-flight checkout got 503 "no service is listening".)"""
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        if any(child.alive for child in self.children.all.values()):
            self.console.say("stopping…")
        self.children.stop([[GATEWAY], self.service_children, [*self.nats_nodes, PAYMENT_STANDIN, PAYMENT_SERVER]],
                           timeout)
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
        # Not the token itself: whatever keeps this output (a terminal's scrollback, a log collector) would keep it.
        where = ("CARTWHEEL_ADMIN_TOKEN" if os.environ.get("CARTWHEEL_ADMIN_TOKEN")
                 else f"{self.var_dir / 'secrets.json'}; `cartwheel admin-token` prints it")
        return f"the shop is at {self.base_url}/  (admin token: in {where}{payments}; Ctrl-C stops all)"

    # -- steps --------------------------------------------------------------------------

    def _check_ports(self) -> None:
        host = self.settings.gateway_host
        if not port_is_free(self.settings.gateway_port, host):
            raise PortTaken(_port_taken(self.settings.gateway_port, "gateway", "CARTWHEEL_GATEWAY_PORT"))
        for name, node in self.nats_nodes.items():
            if not port_is_free(node.port, node.host):
                raise PortTaken(_port_taken(node.port, name, "CARTWHEEL_NATS_URL"))

    def _start_nats(self) -> None:
        where = ", ".join(str(node.data_dir) for node in self.nats_nodes.values())
        cluster = f"{len(self.nats_nodes)} nodes of one JetStream cluster" if len(self.nats_nodes) > 1 else NATS
        self._step(f"starting {cluster} (JetStream in {where})…")
        for name, node in self.nats_nodes.items():
            try:
                node.start(output=subprocess.PIPE, wait=False)
            except PortInUse as exc:
                raise PortTaken(_port_taken(exc.port, name, "CARTWHEEL_NATS_URL")) from None
            assert node.process is not None
            self.children.adopt(name, node.process, respawn=functools.partial(_restart_node, node))
        for name, node in self.nats_nodes.items():
            try:
                node.wait_ready(30.0)
            except NatsServerError as exc:
                raise StartupError(f"{exc}\n{self.children.last_lines(name)}") from None

    def _make_databases(self) -> None:
        """A database for each service and the gateway on the PostgreSQL server, where missing."""
        from cartwheel.db import make_postgres_database

        self._step(f"making the databases on {_without_password(self.postgres or '')}…")
        try:
            for url in [*(self.settings.database_url(name) for name in DATABASES), self.settings.control_url]:
                make_postgres_database(url)
        except Exception as exc:
            raise StartupError(f"could not make the databases on PostgreSQL: {exc}") from None

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
        """localstripe on a private loopback port and the Stripe stand-in in front of it, where payments calls:
        a checkout with test cards works offline. Each is restarted on its own port when it crashes; their state
        is kept in var/localstripe/ (localstripe's pickle, the stand-in's JSON beside it)."""
        from cartwheel import localstripe

        api = urlsplit(self.settings.stripe_api_base or "")
        host, port = api.hostname or "127.0.0.1", api.port or free_port()
        upstream_port = free_port(localstripe.UPSTREAM_HOST)
        upstream = f"http://{localstripe.UPSTREAM_HOST}:{upstream_port}"
        limit = self.settings.payment_server_rate_limit
        self._step(f"starting {PAYMENT_SERVER} {localstripe.version()} (the embedded payment server) on {upstream}, "
                   f"behind the Stripe stand-in on {host}:{port}"
                   + (f" answering 429 above {limit:g} requests/s…" if limit else "…"))
        if not port_is_free(port, host):
            raise PortTaken(_port_taken(port, "the embedded payment server", "CARTWHEEL_STRIPE_API_BASE"))
        state = self.settings.var_dir / "localstripe" / "state.pickle"
        children = (
            (PAYMENT_SERVER, localstripe.bootstrap_argv(localstripe.UPSTREAM_HOST, upstream_port, state), upstream),
            (PAYMENT_STANDIN, localstripe.standin_argv(host, port, upstream, localstripe.standin_state(state),
                                                       self.settings.payment_server_rate_limit),
             f"http://{_url_host(host)}:{port}"),
        )
        for name, argv, url in children:
            child = self.children.spawn(name, argv, restart=True)
            try:
                localstripe.wait_ready(child.process, url, f"{name} on {url}")
            except localstripe.LocalStripeError as exc:
                raise StartupError(f"{exc}\n{self.children.last_lines(name)}") from None

    def _register_webhook(self) -> None:
        from cartwheel.localstripe import LocalStripeError, register_webhook

        assert self.settings.stripe_api_base and self.settings.stripe_webhook_secret
        url = f"{self.base_url}/webhooks/stripe"
        try:
            register_webhook(self.settings.stripe_api_base, url, self.settings.stripe_webhook_secret.get_secret_value())
        except (LocalStripeError, OSError) as exc:
            raise StartupError(f"registering the webhook with the embedded payment server failed: {exc}") from None
        self.console.say(f"the embedded payment server ({PAYMENT_SERVER}, {PAYMENT_STANDIN}) sends signed webhooks "
                         f"to {url}")

    def _start(self, name: str, argv: list[str], metrics_port: int, role: str | None = None) -> None:
        self._step(f"starting {name}…")
        self.children.spawn(name, argv, child_env(self.settings, metrics_port, role or name), restart=True)
        if metrics_port:
            self._ports.setdefault(role or name, []).append(metrics_port)

    def _write_ports(self) -> None:
        """Each child's metrics port, where ``cartwheel health --local`` finds it (service i has base + i + 1), and
        each embedded nats-server's monitoring port (a free one, picked at every start): for a scraper."""
        from cartwheel.health import PORTS_FILE

        nats = {name: node.monitor_url for name, node in self.nats_nodes.items()}
        write_private(self.var_dir / PORTS_FILE,
                      json.dumps({"pid": os.getpid(), "metrics": self._ports, "nats_monitoring": nats}).encode())

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

    def _tenants(self) -> None:
        """Bring every registered tenant's databases to this version's head (the journal skips what is done) and
        tell the bucket the gateway and services read what the registry says."""
        from cartwheel.tenants.cli import registry_of
        from cartwheel.tenants.migrate import plan, run, summary
        from cartwheel.tenants.mirror import sync_now

        registry = registry_of(self.settings)
        try:
            names = registry.names()
            if not names:
                return
            pending = plan(self.settings, registry, tenants=names)
            if pending.todo:
                self._step(f"migrating {len(pending.todo)} databases of {len(names)} tenants…")
                outcome = run(registry, pending.todo, parallel=os.cpu_count() or 2, out=self.console.out)
                if outcome.failures:  # those tenants answer unknown_tenant until fixed; the others are served
                    self.console.alarm(summary(outcome, pending.done))
            problem = sync_now(self.settings, registry)
            if problem:
                raise StartupError(f"could not publish the tenant registry: {problem}")
            self.console.say(f"{len(names)} tenants registered")
        finally:
            registry.close()

    def _wait_ready(self, deadline: float) -> None:
        self._step("waiting for the gateway and the services…")
        gateway_status = "not asked yet"
        services_ok = False
        while True:
            self._raise_if_a_child_died()
            if gateway_status != "200":
                gateway_status = self._readyz()
            if not services_ok:  # every replica, not the first to answer
                services_ok = self._healthy(list(SERVICES), {name: len(self.replicas[name]) for name in SERVICES})
            if gateway_status == "200" and services_ok:
                return
            if time.monotonic() > deadline:
                raise StartupError(self._not_ready(gateway_status, services_ok))
            if self._stop_requested.wait(0.25):
                raise StartupInterrupted("interrupted while starting")

    def _healthy(self, names: list[str], expect: dict[str, int] | None = None) -> bool:
        from cartwheel.health import check_services

        try:
            return check_services(self.settings, names, quiet=True, expect=expect)
        except Exception:  # NATS not there yet, or a service half up: ask again later
            return False

    def _readyz(self) -> str:
        from cartwheel.health import http_status

        return str(http_status(f"{self.base_url}/readyz"))

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
        """Give up on a child that cannot start: one not to be restarted that exited, or one that exited
        :data:`START_ATTEMPTS` times in a row (the watcher restarts it, with its backoff, until then)."""
        for child in self.children.all.values():
            code = child.process.poll()
            if code is None:
                continue
            if child.respawn is None or not self.children.watching:
                raise StartupError(f"{child.name} exited while starting ({describe_exit(code)})\n"
                                   f"{self.children.last_lines(child.name)}")
            if child.exit_seen and child.crashes >= START_ATTEMPTS:
                raise StartupError(f"{child.name} exited while starting, {child.crashes} times in a row (last: "
                                   f"{describe_exit(code)})\n{self.children.last_lines(child.name)}")

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


CLUSTER_NODES = 3


def _replica_names(service: str, count: int) -> list[str]:
    return [service] if count == 1 else [f"{service}-{i}" for i in range(1, count + 1)]


def _restart_node(node: NatsServer) -> subprocess.Popen[bytes]:
    node.start(output=subprocess.PIPE, wait=False)
    assert node.process is not None
    return node.process


def parse_scale(text: str) -> dict[str, int]:
    """``inventory=3,cart=2`` → ``{"inventory": 3, "cart": 2}``; ValueError says what is wrong."""
    scale: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if not count.isdecimal():
            raise ValueError(f"{part!r}: {SCALE_SYNTAX}")
        scale[name] = int(count)
    check_scale(scale)
    return scale


SCALE_SYNTAX = f"expected SERVICE=N with N >= 1, SERVICE one of {', '.join(SERVICES)}"


def check_scale(scale: Mapping[str, int]) -> None:
    """ValueError unless every name is a service and every count at least 1."""
    for name, count in scale.items():
        if name not in SERVICES or count < 1:
            raise ValueError(f"'{name}={count}': {SCALE_SYNTAX}")


def postgres_database(server_url: str, name: str) -> str:
    """The URL of ``name``'s own database (``cartwheel_<name>``) on the server ``server_url`` points at (``name``
    may hold the tenant template's ``{service}`` and ``{tenant}``)."""
    url = make_url(server_url).set(drivername="postgresql+psycopg", database=f"cartwheel_{name}")
    return url.render_as_string(hide_password=False).replace("%7B", "{").replace("%7D", "}")


def _without_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _port_taken(port: int, what: str, variable: str) -> str:
    return f"port {port} is already in use ({what}); set {variable} or stop the other program"


def up(settings: Settings, *, cluster: bool = False, scale: Mapping[str, int] | None = None,
       postgres: str | None = None) -> int:
    """``cartwheel up``: run the shop until SIGINT/SIGTERM (exit 0); 1 when it cannot start. What crashes once it
    runs is started again (see :class:`Children`)."""
    try:
        system = System(settings, cluster=cluster, scale=scale, postgres=postgres)
    except StartupError as exc:
        print(f"cartwheel: {exc}", file=sys.stderr)
        return 1

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
