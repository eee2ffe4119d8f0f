"""The collector and tenants' databases opened after start (cartwheel.heap.HeapSettler), in a process of its own:
a settle freezes the heap, which a test's process must not have done to it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import asyncio, gc, weakref
from cartwheel.heap import HeapSettler

def tracked(obj):
    return any(o is obj for o in gc.get_objects())  # frozen objects are out of the collector's lists

class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it
"""


def run(body: str) -> None:
    main = "async def main():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    script = f"{PRELUDE}\n{main}\nasyncio.run(main())\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_what_opened_after_start_is_frozen_once_openings_have_been_quiet_a_while() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.2, every=0.0)
        engine = [{"pool": i} for i in range(1000)]  # what opening a database leaves alive
        assert tracked(engine)
        for _ in range(3):  # a burst of openings: settled once, after the last
            settler.opened()
            await asyncio.sleep(0.1)
        assert settler.settles == 0 and tracked(engine)
        await asyncio.sleep(0.3)
        assert settler.settles == 1 and not tracked(engine)
        assert not tracked(engine[0])
    """)


def test_openings_one_after_another_settle_at_most_every_so_often() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.05, every=1.0)
        settler.opened()
        await asyncio.sleep(0.2)
        assert settler.settles == 1
        settler.opened()
        await asyncio.sleep(0.3)
        assert settler.settles == 1  # due a second after the first
        await asyncio.sleep(0.8)
        assert settler.settles == 2
        settler.opened()
        settler.stop()  # the service stopping: nothing more runs
        await asyncio.sleep(1.2)
        assert settler.settles == 2
    """)


def test_cyclic_garbage_frozen_alive_is_freed_by_a_reclaim_after_a_database_closed() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.0, every=0.0, reclaim_every=0.0)
        node = Node()
        gone = weakref.ref(node)
        settler.settle()  # frozen while alive: an evicted tenant's engine, say
        del node
        gc.collect()
        settler.settle()
        assert gone() is not None and settler.reclaims == 0  # frozen garbage: no reclaim without a closing
        settler.closed()
        settler.settle()
        assert gone() is None and settler.reclaims == 1
    """)


def test_a_reclaim_comes_no_more_often_than_its_interval() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.0, every=0.0, reclaim_every=3600.0)
        node = Node()
        gone = weakref.ref(node)
        settler.settle()
        del node
        settler.closed()
        for _ in range(30):  # past RECLAIM_AFTER settles too
            settler.settle()
        assert gone() is not None and settler.reclaims == 0
    """)
