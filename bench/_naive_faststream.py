"""The naive way of bench/flash_sale.py: a plain FastStream JetStream subscriber, one message at a time.

    python bench/_naive_faststream.py NATS_URL SUBJECT_PREFIX STREAM SQLITE_FILE

A durable pull consumer (``PullSub(batch_size=1)``, ``max_ack_pending=1``) on ``<prefix>.cmd.*``
takes one reserve command at a time, runs the conditional decrement in SQLite (WAL,
``synchronous=NORMAL``, as ``cartwheel.db`` sets it), commits, then publishes ``1`` (sold) or
``0`` (out of stock) on core NATS to the subject in the command's ``Reply-Subject`` header;
FastStream acks after the handler returns. ``<prefix>.ready`` answers once the consumer runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

from faststream import FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig

REPLY_HEADER = "Reply-Subject"
DECREMENT = "UPDATE stock SET available = available - 1 WHERE product_id = ? AND available >= 1"


def build(url: str, prefix: str, stream: str, db_path: str) -> FastStream:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    broker = NatsBroker(url, logger=None)  # no line per message: measure the consumer, not the log

    @broker.subscriber(
        f"{prefix}.cmd.*",
        stream=JStream(stream, subjects=[f"{prefix}.cmd.*"]),
        durable="reserve",
        pull_sub=PullSub(batch_size=1),
        config=ConsumerConfig(max_ack_pending=1),
    )
    async def reserve_stock(msg: NatsMessage) -> None:
        product_id = msg.raw_message.subject.rsplit(".", 1)[1]
        sold = db.execute(DECREMENT, (product_id,)).rowcount == 1
        await broker.publish(b"1" if sold else b"0", subject=msg.headers[REPLY_HEADER])

    @broker.subscriber(f"{prefix}.ready")
    async def ready() -> bytes:
        return b"ok"

    return FastStream(broker, logger=None)


if __name__ == "__main__":
    asyncio.run(build(*sys.argv[1:5]).run())
