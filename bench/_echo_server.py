"""The ceiling of bench/flash_sale.py: a bare core-NATS echo service, one nats-py subscriber, in its own process.

    python bench/_echo_server.py NATS_URL SUBJECT

Answers every request on SUBJECT with its own payload; no stock, no storage. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.aio.msg import Msg


async def serve(url: str, subject: str) -> None:
    nc = await nats.connect(url)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
