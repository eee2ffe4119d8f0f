"""Who may say what on the bus: one NATS user per process kind, signed in with an NKey, allowed its own subjects.

Each service, the gateway and ``admin`` (the CLI and operators) have an NKey pair. The server's config
holds only the public keys (:func:`authorization`); each process holds its own seed, in a file
(``CARTWHEEL_NATS_NKEY_FILE``, a Kubernetes Secret mounted as a file; for ``cartwheel up`` the file
``var/nats-keys/<identity>.nk`` that :func:`ensure_keys` makes). Without a seed a process connects
anonymously, which only a server with no ``authorization`` block accepts.

The permissions name what each identity owns and calls, derived from :mod:`cartwheel.subjects`:

- a service answers its own requests (``<service>.>``, its ``health`` subject; replies by
  ``allow_responses``), publishes its own events (``events.<service>.>``) and asks only the
  questions it needs;
- the gateway may publish only the request subjects it calls, read the buckets it serves from,
  and write product images;
- replies come back on an inbox of the identity's own (``_INBOX_<identity>.``), so nobody else can
  subscribe to them; lane replies, which a lane worker publishes to its caller's inbox (a caller in
  its own process gets them by hand), are the only publishing into another identity's inbox;
- JetStream access is per stream: the streams and buckets an identity uses, nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nkeys

from cartwheel import subjects
from cartwheel.files import private_dir, write_private
from cartwheel.settings import SERVICES, Settings

GATEWAY = "gateway"
ADMIN = "admin"
IDENTITIES: tuple[str, ...] = (*SERVICES, GATEWAY, ADMIN)
"""Everything that signs in to the bus: the five services, the gateway, and admin (CLI, operators)."""
KEYS_DIR = "nats-keys"
"""Folder under ``var/`` of the embedded server's seeds, one ``<identity>.nk`` per identity."""

_KV = "KV_"
_OBJ = "OBJ_"


def inbox_prefix(identity: str) -> str:
    """Where ``identity``'s replies arrive; subscribing there is allowed to it alone."""
    return f"_INBOX_{identity}"


def _stream_read(stream: str) -> list[str]:
    """Read all of a stream (a bucket, a lane's own): its info, messages by sequence, consumers of one's own
    (push or pull) with their acks."""
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*", f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>",
    ]


def _stream_own(stream: str) -> list[str]:
    """Declare (create, bring up to date) and purge a stream, besides reading it: a lane's own stream and bucket."""
    api = "$JS.API"
    return [*_stream_read(stream), f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.UPDATE.{stream}",
            f"{api}.STREAM.PURGE.{stream}"]


def _event_consumers(service: str) -> list[str]:
    """Of the EVENTS stream (every order, with emails, passes through it), only the service's own durables,
    each made with its own filter (the server checks the request's filter against the subject's), and their
    acks: no reading by sequence, no consumer of another's, no other filter."""
    api, stream = "$JS.API", subjects.EVENTS_STREAM
    allowed = [f"{api}.STREAM.INFO.{stream}"]
    for durable, subject in subjects.EVENT_CONSUMERS[service].items():
        allowed += [f"{api}.CONSUMER.CREATE.{stream}.{durable}.{subject}", f"{api}.CONSUMER.INFO.{stream}.{durable}",
                    f"$JS.ACK.{stream}.{durable}.>"]
    return allowed


def _bucket_read(bucket: str) -> list[str]:
    return _stream_read(_KV + bucket)


def _bucket_write(bucket: str) -> list[str]:
    return [*_stream_read(_KV + bucket), f"$KV.{bucket}.>"]


def _lane_bucket(bucket: str) -> list[str]:
    """A lane's lease bucket: its own, moved from memory to file by deleting and making it again."""
    return [*_stream_own(_KV + bucket), f"$JS.API.STREAM.DELETE.{_KV}{bucket}", f"$KV.{bucket}.>"]


def _declares() -> list[str]:
    """What every service needs to declare the shared topology at start (:func:`cartwheel.bus.declare_topology`):
    to create what is missing. Not to change what exists (a stream takes whatever subjects its config names,
    whoever may publish them): that is admin's, with ``cartwheel migrate --streams``."""
    api = "$JS.API"
    names = [subjects.EVENTS_STREAM, _KV + subjects.CATALOG_CACHE_BUCKET, _KV + subjects.INVENTORY_STOCK_BUCKET,
             _KV + subjects.TENANTS_BUCKET, *(_OBJ + bucket for bucket in subjects.TENANT_OBJECT_BUCKETS)]
    return [f"{api}.{verb}.{name}" for name in names for verb in ("STREAM.INFO", "STREAM.CREATE")]


def _lane(lane: str) -> list[str]:
    """Run a lane: its stream and lease bucket, its command and outcome subjects."""
    return [*_stream_own(subjects.lane_stream(lane)), *_lane_bucket(subjects.lane_bucket(lane)),
            subjects.lane_command(lane, "*"), subjects.lane_outcome(lane)]


def _lane_caller(lane: str) -> list[str]:
    """Send a lane commands (they enter its stream) and ask for a command's recorded outcome."""
    return [subjects.lane_command(lane, "*"), subjects.lane_outcome(lane)]


_CATALOG_READS = [subjects.CATALOG_PRODUCTS_GET, subjects.CATALOG_PRODUCTS_LIST]
_CATALOG_WRITES = [subjects.CATALOG_PRODUCTS_CREATE, subjects.CATALOG_PRODUCTS_UPDATE,
                   subjects.CATALOG_PRODUCTS_SET_IMAGE, subjects.CATALOG_PRODUCTS_SET_FILE]
_CART_CALLS = [subjects.CART_GET, subjects.CART_ADD, subjects.CART_SET, subjects.CART_REMOVE, subjects.CART_LIST,
               subjects.CART_MERGE]
_STOCK_READS = [subjects.INVENTORY_STOCK_GET, subjects.INVENTORY_STOCKS_GET]
_STOCK_WRITES = [subjects.INVENTORY_RESTOCK, subjects.INVENTORY_SET_STOCK]
_ORDER_CALLS = [subjects.ORDERS_CHECKOUT, subjects.ORDERS_GET, subjects.ORDERS_LIST, subjects.ORDERS_CANCEL,
                subjects.ORDERS_PAY]
_PAYMENT_CALLS = [subjects.PAYMENTS_INTENT_CREATE, subjects.PAYMENTS_INTENT_CONFIRM,
                  subjects.PAYMENTS_INTENT_CANCEL, subjects.PAYMENTS_REFUND, subjects.PAYMENTS_CHECKOUT_CREATE,
                  subjects.PAYMENTS_CHECKOUT_EXPIRE]
_MAIL_CALLS = [subjects.NOTIFICATIONS_MAIL_LIST, subjects.NOTIFICATIONS_MAIL_SENT, subjects.NOTIFICATIONS_MAIL_RESEND,
               subjects.NOTIFICATIONS_UNSUBSCRIBE]

_CALLS: dict[str, list[str]] = {
    "catalog": [],
    "cart": [*_CATALOG_READS, *_STOCK_READS],
    "inventory": _lane_caller(subjects.INVENTORY_LANE),
    "orders": [*_CATALOG_READS, subjects.CART_GET, *_STOCK_READS, *_PAYMENT_CALLS,
               *_lane_caller(subjects.INVENTORY_LANE)],
    "payments": [],
    "notifications": [subjects.ORDERS_GET],  # an admin's resend: the order as it is now
    GATEWAY: [*_CATALOG_READS, *_CATALOG_WRITES, *_CART_CALLS, *_STOCK_READS, *_STOCK_WRITES, *_ORDER_CALLS,
              *_MAIL_CALLS, subjects.PAYMENTS_WEBHOOK, subjects.health("*")],
}
"""The request subjects each identity may publish: the questions it asks other services."""



def _lane_callers(owner: str, lane: str) -> list[str]:
    """Whose inboxes a lane worker answers: its own service's, and every identity that may send it commands."""
    return [owner, *(identity for identity, calls in _CALLS.items() if subjects.lane_command(lane, "*") in calls)]

_JETSTREAM: dict[str, list[str]] = {
    "catalog": [*_bucket_write(subjects.CATALOG_CACHE_BUCKET)],
    "cart": [*_bucket_read(subjects.CATALOG_CACHE_BUCKET), *_bucket_read(subjects.INVENTORY_STOCK_BUCKET)],
    "inventory": [*_bucket_write(subjects.INVENTORY_STOCK_BUCKET)],
    "orders": [*_bucket_read(subjects.CATALOG_CACHE_BUCKET), *_bucket_read(subjects.INVENTORY_STOCK_BUCKET)],
    "payments": [],
    "notifications": [],
    GATEWAY: [*_bucket_read(subjects.CATALOG_CACHE_BUCKET), *_bucket_read(subjects.INVENTORY_STOCK_BUCKET),
              *(grant for bucket in subjects.TENANT_OBJECT_BUCKETS for grant in (
                  *_stream_read(_OBJ + bucket), f"$O.{bucket}.>",
                  f"$JS.API.STREAM.PURGE.{_OBJ}{bucket}")),  # an image (a file) replaced
              "$JS.API.STREAM.NAMES"],  # nats-py finds an object's stream by its subject (names only)
}


def permissions(identity: str) -> dict[str, Any]:
    """The server-side permissions of ``identity`` (the ``permissions`` map of its user entry)."""
    if identity == ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if identity not in _CALLS:
        raise ValueError(f"unknown identity {identity!r}")
    # Every process serves many tenants: each reads the registry's mirror (hosts, status, settings).
    publish = ["$JS.API.INFO", *_CALLS[identity], *_JETSTREAM[identity], *_bucket_read(subjects.TENANTS_BUCKET)]
    subscribe = [f"{inbox_prefix(identity)}.>"]
    if identity == GATEWAY:
        subscribe.append(subjects.CART_UPDATED)  # live carts (SSE) hear changes as they are published
    if identity in SERVICES:
        publish += [f"events.{identity}.>", *_declares(), *_event_consumers(identity)]
        subscribe += [f"{identity}.>", subjects.health(identity)]
        if lane := subjects.SERVICE_LANES.get(identity):
            callers = _lane_callers(identity, lane)
            publish += [*_lane(lane), *(subjects.lane_replies(inbox_prefix(caller), ">") for caller in callers)]
    entry: dict[str, Any] = {"publish": {"allow": _unique(publish)}, "subscribe": {"allow": _unique(subscribe)}}
    if identity in SERVICES:
        entry["allow_responses"] = True  # answer a request on its reply subject, once, whoever asked
    return entry


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def new_seed() -> str:
    """A fresh user NKey seed (``SU…``)."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    """The public key (``U…``) of a user seed; ValueError when it is not one."""
    try:
        pair = nkeys.from_seed(bytearray(seed.strip().encode()))
        return pair.public_key.decode()
    except (nkeys.NkeysError, ValueError) as exc:
        raise ValueError(f"not an NKey seed: {exc}") from None


def ensure_keys(folder: Path) -> dict[str, str]:
    """A seed file per identity under ``folder`` (0700, files 0600), made where missing; identity → seed."""
    private_dir(folder, narrow=True)
    seeds: dict[str, str] = {}
    for identity in IDENTITIES:
        path = folder / f"{identity}.nk"
        if not path.exists():
            write_private(path, (new_seed() + "\n").encode(), replace=False)  # a concurrent maker's file stands
        seeds[identity] = path.read_text().strip()
        public_key(seeds[identity])  # a damaged file is refused here, not by the server later
    return seeds


def authorization(public_keys: dict[str, str]) -> str:
    """The ``authorization`` block of a nats-server config: one user per identity, nobody anonymous."""
    # nats-server's config format reads JSON values; a user list is the whole authorization.
    body = ",\n".join(
        f"    # {identity}\n    " + json.dumps({"nkey": public_keys[identity], "permissions": permissions(identity)})
        for identity in IDENTITIES
    )
    return "authorization {\n  users: [\n" + body + "\n  ]\n}\n"


def write_authorization(folder: Path, seeds: dict[str, str]) -> Path:
    """Write ``folder/auth.conf`` (public keys and permissions only) for a server config to ``include``."""
    path = folder / "auth.conf"
    write_private(path, authorization({identity: public_key(seed) for identity, seed in seeds.items()}).encode())
    path.chmod(0o644)  # no secret in it; the server may run as another user
    return path


def seed_file(settings: Settings, identity: str) -> Path | None:
    """The seed file ``identity`` signs in with: the configured one, else ``var/nats-keys/<identity>.nk`` if
    it exists (``cartwheel up`` made it), else None (connect without credentials)."""
    if settings.nats_nkey_file is not None:
        return settings.nats_nkey_file
    path = settings.var_dir / KEYS_DIR / f"{identity}.nk"
    return path if path.exists() else None


def signs_in_as(settings: Settings, identity: str) -> str:
    """The identity this process's key belongs to: the one a configured key file is named after
    (``/keys/catalog.nk``: catalog, whatever the process asks to be, e.g. ``cartwheel health`` run in the catalog
    container), else ``identity``. Its inbox must be that identity's, where the server lets it subscribe."""
    if settings.nats_nkey_file is not None and settings.nats_nkey_file.stem in IDENTITIES:
        return settings.nats_nkey_file.stem
    return identity


def connect_options(settings: Settings, identity: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: the identity's seed, inbox and TLS."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(signs_in_as(settings, identity))}
    if (path := seed_file(settings, identity)) is not None:
        options["nkeys_seed_str"] = path.read_text().strip()
    if (tls := settings.nats_tls_context()) is not None:
        options["tls"] = tls
    return options


def broker_options(settings: Settings, identity: str) -> dict[str, Any]:
    """The same for FastStream's ``NatsBroker``, which takes the seed and TLS as one ``security``."""
    from faststream.nats.security import NatsNKey, NatsSecurity

    tls = settings.nats_tls_context()
    path = seed_file(settings, identity)
    security = NatsNKey.from_seed(path.read_text().strip(), ssl_context=tls) if path is not None \
        else NatsSecurity(ssl_context=tls) if tls is not None else None
    return {"inbox_prefix": inbox_prefix(signs_in_as(settings, identity)), "security": security}
