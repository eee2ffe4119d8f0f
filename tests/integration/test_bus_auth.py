"""The bus admits only the shop's own processes, each to its own subjects (cartwheel/natsauth.py), on a real
nats-server configured as ``cartwheel up`` configures the embedded one."""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from cartwheel import natsauth, subjects
from cartwheel.bus import make_broker
from cartwheel.contracts.orders import ListOrders
from cartwheel.natsserver import BINARY, NatsServer, free_port, port_is_free, spawn, terminate, wait_until_answering
from cartwheel.settings import SERVICES, Settings


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """URL of a nats-server with one NKey user per identity, and each identity's seed."""
    folder = tmp_path_factory.mktemp("secured-nats")
    seeds = natsauth.ensure_keys(folder / "keys")
    public = {identity: natsauth.public_key(seed) for identity, seed in seeds.items()}
    server = NatsServer(folder / "nats", free_port(), authorization=natsauth.authorization(public),
                        probe_seed=seeds[natsauth.ADMIN])
    with (folder / "nats-server.log").open("wb") as log:
        server.start(output=log)
        try:
            yield server.url, seeds
        finally:
            server.stop()


async def _as(url: str, seeds: dict[str, str] | None, identity: str, errors: list[str]) -> nats.NATS:
    async def note(error: Exception) -> None:
        errors.append(str(error))

    options: dict[str, Any] = {"inbox_prefix": natsauth.inbox_prefix(identity)}
    if seeds is not None:
        options["nkeys_seed_str"] = seeds[identity]
    return await nats.connect(url, error_cb=note, allow_reconnect=False, max_reconnect_attempts=0, **options)


def test_a_client_without_credentials_is_refused(secured: tuple[str, dict[str, str]]) -> None:
    url, _ = secured
    errors: list[str] = []
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(_as(url, None, "catalog", errors))


def test_a_seed_the_server_does_not_know_is_refused(secured: tuple[str, dict[str, str]]) -> None:
    url, _ = secured
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(_as(url, {"catalog": natsauth.new_seed()}, "catalog", []))


def _errors_after(url: str, seeds: dict[str, str], identity: str,
                  act: Callable[[nats.NATS], Awaitable[object]]) -> list[str]:
    """What the server told ``identity``'s connection while it did ``act`` (lower case, as nats-py says it)."""
    errors: list[str] = []

    async def attempt() -> None:
        nc = await _as(url, seeds, identity, errors)
        try:
            await act(nc)
            await nc.flush()
            await asyncio.sleep(0.2)
        finally:
            await nc.close()

    asyncio.run(attempt())
    return [error.lower() for error in errors]


@pytest.mark.parametrize(("identity", "subject"), [
    ("catalog", ListOrders.subject),  # the probe's exact request: every order, emails and client secrets
    ("payments", subjects.ORDERS_LIST),
    ("gateway", subjects.lane_command(subjects.INVENTORY_LANE, "p-1")),  # lanes are the services' own
    ("gateway", subjects.PAYMENTS_REFUND),  # refunds go through orders, which checks the order
    ("gateway", "$JS.API.CONSUMER.CREATE.LANE_INVENTORY"),
    ("cart", subjects.ORDERS_PAID),  # no service publishes another's events
    ("catalog", "$JS.API.STREAM.DELETE.EVENTS"),
    # EVENTS carries every order (emails, client secrets): a service reads only its own durables' subjects.
    ("catalog", "$JS.API.STREAM.MSG.GET.EVENTS"),
    ("catalog", "$JS.API.DIRECT.GET.EVENTS"),
    ("catalog", "$JS.API.CONSUMER.CREATE.EVENTS.catalog-cache.events.orders.>"),  # its durable, another filter
    ("catalog", "$JS.API.CONSUMER.CREATE.EVENTS"),  # an ephemeral consumer of everything
    ("catalog", "$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.catalog-cache"),  # the form without a filter
    ("orders", "$JS.API.CONSUMER.CREATE.EVENTS.catalog-cache.events.catalog.>"),  # another service's durable
    ("gateway", "$JS.API.CONSUMER.CREATE.EVENTS"),
    # A stream takes any subject its config names: changing shared ones is admin's.
    ("catalog", "$JS.API.STREAM.UPDATE.EVENTS"),
    ("gateway", "$JS.API.STREAM.UPDATE.OBJ_product_images"),
    ("inventory", "$JS.API.STREAM.UPDATE.KV_catalog_products"),
    # A lane worker answers its callers' lane inboxes, nothing else of theirs.
    ("inventory", "_INBOX_orders.abc.1"),
])
def test_a_service_may_not_publish_what_is_not_its_own(secured: tuple[str, dict[str, str]], identity: str,
                                                       subject: str) -> None:
    async def ask(nc: nats.NATS) -> None:
        with pytest.raises(nats.errors.TimeoutError):  # dropped by the server: nobody hears it
            await nc.request(subject, b"{}", timeout=0.5)

    errors = _errors_after(*secured, identity, ask)
    assert f'nats: permissions violation for publish to "{subject.lower()}"' in errors


@pytest.mark.parametrize(("identity", "subject"), [
    ("catalog", "orders.>"),  # nobody else hears a service's requests
    ("gateway", "_INBOX_orders.>"),  # nor another identity's replies
    ("inventory", ">"),
    ("gateway", subjects.ORDERS_PAID),
])
def test_a_service_may_not_listen_to_what_is_not_its_own(secured: tuple[str, dict[str, str]], identity: str,
                                                         subject: str) -> None:
    errors = _errors_after(*secured, identity, lambda nc: nc.subscribe(subject))
    assert f'nats: permissions violation for subscription to "{subject.lower()}"' in errors


def test_a_lane_worker_may_answer_its_callers_lane_inbox(secured: tuple[str, dict[str, str]]) -> None:
    errors = _errors_after(*secured, "inventory", lambda nc: nc.publish("_INBOX_orders.lane.abc.cmd-1", b"{}"))
    assert errors == []


def test_a_service_answers_what_it_owns_and_its_callers_hear_the_reply(secured: tuple[str, dict[str, str]]) -> None:
    """The allowed path, end to end: the gateway asks orders, orders answers on the gateway's own inbox."""
    url, seeds = secured

    async def exchange() -> bytes:
        orders = await _as(url, seeds, "orders", [])
        gateway = await _as(url, seeds, natsauth.GATEWAY, [])
        try:
            async def answer(msg: Any) -> None:
                await msg.respond(b"listed")

            await orders.subscribe(subjects.ORDERS_LIST, queue="orders", cb=answer)
            await orders.flush()
            return (await gateway.request(subjects.ORDERS_LIST, b"{}", timeout=2)).data
        finally:
            await gateway.close()
            await orders.close()

    assert asyncio.run(exchange()) == b"listed"


def test_a_seed_file_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = natsauth.ensure_keys(tmp_path / "keys")
    assert natsauth.ensure_keys(tmp_path / "keys") == first  # a restart keeps every identity's key
    assert set(first) == set(natsauth.IDENTITIES)
    assert all((tmp_path / "keys" / f"{identity}.nk").stat().st_mode & 0o777 == 0o600 for identity in first)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700


def test_a_process_reaches_a_tls_only_server_with_the_tls_settings(tmp_path: Path) -> None:
    """TLS to NATS is configuration: a server with a certificate (and keys), a process with
    CARTWHEEL_NATS_TLS_CA and a tls:// URL; without the CA the handshake is refused."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    seeds = natsauth.ensure_keys(tmp_path / "var" / natsauth.KEYS_DIR)
    public = {identity: natsauth.public_key(seed) for identity, seed in seeds.items()}
    port = free_port()
    config = tmp_path / "tls.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\n'
                      f'tls {{\n  cert_file: {json.dumps(str(cert))}\n  key_file: {json.dumps(str(key))}\n}}\n'
                      + natsauth.authorization(public))
    server = spawn([str(BINARY), "-c", str(config)])
    try:
        wait_until_answering(server, lambda: not port_is_free(port), "nats-server", 15, RuntimeError)
        settings = Settings(var_dir=tmp_path / "var", nats_url=f"tls://127.0.0.1:{port}", nats_tls_ca=cert)

        async def ping(options: dict[str, Any]) -> bool:
            nc = await nats.connect(settings.nats_servers, allow_reconnect=False, max_reconnect_attempts=0,
                                    connect_timeout=3, **options)
            try:
                await nc.flush(timeout=3)
                return nc.is_connected
            finally:
                await nc.close()

        assert asyncio.run(ping(natsauth.connect_options(settings, "catalog")))

        async def service_connects() -> bool:  # the services' FastStream broker takes the same settings
            broker = make_broker(settings, "catalog")
            await broker.connect()
            try:
                await broker.connection.flush(timeout=3)
                return broker.connection.is_connected
            finally:
                await broker.stop()

        assert asyncio.run(service_connects())
        untrusting = natsauth.connect_options(settings.model_copy(update={"nats_tls_ca": None}), "catalog")
        with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):  # the system's CAs don't know this one
            asyncio.run(ping(untrusting))
    finally:
        terminate(server)


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_event_consumers_are_the_ones_the_bus_lets_it_make(service: str, tmp_path: Path) -> None:
    """The bus lets a service make exactly the EVENTS durables subjects.EVENT_CONSUMERS lists, each with its
    filter; a service that consumed anything else would be refused at start."""
    built = importlib.import_module(f"services.{service}.app").build(Settings(var_dir=tmp_path))
    assert built.event_consumers == subjects.EVENT_CONSUMERS[service]
