"""What ``cartwheel tenants delete`` removes from NATS: the tenant's messages in the EVENTS stream and the lanes'
command streams (erased, not just deleted: the server overwrites them), its keys in the catalog and stock buckets
(purged), and its product images.

Streams are keyed by subject, not by tenant, so this reads each stream once from its start to its last message
at the time of asking and erases each message whose body names the tenant. A long stream takes a while; progress
is printed every few seconds.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from cartwheel import natsauth, subjects
from cartwheel.settings import Settings

PROGRESS_EVERY_S = 5.0
STREAMS = {subjects.EVENTS_STREAM: subjects.EVENTS_ALL,
           **{subjects.lane_stream(lane): subjects.lane_command(lane, ">") for lane in subjects.SERVICE_LANES.values()}}


async def erase_messages(settings: Settings, tenant: str,
                         say: Callable[[str], None] = print) -> dict[str, int]:
    """Erase ``tenant``'s messages from every stream that carries them; how many from each."""
    mark = re.compile(rb'"tenant":\s*"' + re.escape(tenant.encode()) + rb'"')
    nc = await nats.connect(settings.nats_servers, connect_timeout=5, max_reconnect_attempts=2,
                            **natsauth.connect_options(settings, natsauth.ADMIN))
    erased: dict[str, int] = {}
    try:
        js = nc.jetstream()
        for stream, subject in STREAMS.items():
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                continue
            last, count = info.state.last_seq, 0
            if not info.state.messages:
                erased[stream] = 0
                continue
            sub = await js.subscribe(subject, stream=stream, ordered_consumer=True,
                                     config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            printed = time.monotonic()
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=5)
                    except nats.errors.TimeoutError:  # the last ones were removed meanwhile (a lane purges)
                        break
                    seq = msg.metadata.sequence.stream
                    if mark.search(msg.data) or (msg.headers or {}).get(subjects.LANE_TENANT_HEADER) == tenant:
                        await js.delete_msg(stream, seq)  # the server overwrites it (secure erase)
                        count += 1
                    if time.monotonic() - printed >= PROGRESS_EVERY_S:
                        printed = time.monotonic()
                        say(f"  {stream}: read to {seq} of {last}, {count} erased")
                    if seq >= last:
                        break
            finally:
                await sub.unsubscribe()
            erased[stream] = count
        for bucket in (subjects.CATALOG_CACHE_BUCKET, subjects.INVENTORY_STOCK_BUCKET):
            with contextlib.suppress(nats.js.errors.NotFoundError):  # every key of a shared bucket: <tenant>.…
                await js.purge_stream(subjects.kv_stream(bucket), subject=subjects.kv_keys_of_tenant(bucket, tenant))
                erased[f"KV {bucket}"] = -1  # purged; the server does not say how many
        for bucket in subjects.TENANT_OBJECT_BUCKETS:  # product images, digital products' files
            erased[f"objects in {bucket}"] = await _erase_objects(js, bucket, tenant)
    finally:
        await nc.close()
    return erased


async def _erase_objects(js: JetStreamContext, bucket: str, tenant: str) -> int:
    """The tenant's objects in ``bucket`` (named ``<tenant>/…``)."""
    try:
        store = await js.object_store(bucket)
        objects = await store.list()
    except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
        return 0
    mine = [info.name for info in objects if info.name.startswith(f"{tenant}/") and not info.deleted]
    for name in mine:
        await store.delete(name)
    return len(mine)
