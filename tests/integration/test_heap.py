"""The collector and tenants' databases opened after start (cartwheel.heap.HeapSettler), and its pauses as a metric
(cartwheel.observability.CollectorPauses). Each test runs in a process of its own: a settle freezes the heap and
the callbacks are the interpreter's, which a test's process must not have done to it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import asyncio, gc, threading, weakref
from cartwheel.heap import HeapSettler

def tracked(obj):
    return any(o is obj for o in gc.get_objects())  # frozen objects are out of the collector's lists

class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it

def frozen_then_dropped(settler):  # an engine frozen by a settle while open, then dropped: frozen garbage
    engine = Node()
    settler.settle()
    return weakref.ref(engine)
"""


def run(body: str) -> None:
    main = "async def main():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    script = f"{PRELUDE}\n{main}\nasyncio.run(main())\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_what_opened_after_start_is_frozen_once_openings_have_been_quiet_a_while() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.6, every=0.0)
        engine = [Node() for _ in range(1000)]  # what opening a database leaves alive
        assert tracked(engine[0])
        for _ in range(3):  # a burst of openings, from another thread too: settled once, after the last
            threading.Thread(target=settler.opened).start()
            await asyncio.sleep(0.2)
        assert settler.settles == 0 and tracked(engine[0])
        await asyncio.sleep(1.0)
        assert settler.settles == 1 and not tracked(engine[0]) and not tracked(engine)
    """)


def test_openings_one_after_another_settle_at_most_every_so_often_and_none_after_the_stop() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.05, every=1.0)
        settler.opened()
        await asyncio.sleep(0.3)
        assert settler.settles == 1
        settler.opened()
        await asyncio.sleep(0.3)
        assert settler.settles == 1  # due a second after the first
        await asyncio.sleep(0.8)
        assert settler.settles == 2
        settler.opened()
        settler.stop()  # the service stopping: an opening handed over before is dropped
        settler.opened()
        await asyncio.sleep(1.3)
        assert settler.settles == 2
    """)


def test_a_closed_database_brings_a_reclaim_that_frees_what_was_frozen_alive() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.05, every=0.0, reclaim_every=0.0)
        gone = frozen_then_dropped(settler)
        gc.collect()
        settler.settle()
        assert gone() is not None and settler.reclaims == 0  # no reclaim owed: it stays
        settler.closed()  # a settle of its own, no opening needed
        await asyncio.sleep(0.3)
        assert gone() is None and settler.reclaims == 1
    """)


def test_a_reclaim_owed_comes_at_its_interval_by_itself() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), quiet=0.05, every=0.0, reclaim_every=1.0)
        gone = frozen_then_dropped(settler)
        settler.closed()
        await asyncio.sleep(0.3)
        assert settler.settles == 2 and settler.reclaims == 0 and gone() is not None  # not a second since start
        await asyncio.sleep(1.0)
        assert settler.reclaims == 1 and gone() is None
        await asyncio.sleep(1.2)
        assert settler.settles == 3  # nothing owed since
    """)


def test_settles_without_closings_owe_a_reclaim_after_so_many() -> None:
    run("""
        settler = HeapSettler(asyncio.get_running_loop(), every=0.0, reclaim_every=0.0, reclaim_after=3)
        gone = frozen_then_dropped(settler)
        settler.settle(), settler.settle()
        assert settler.reclaims == 0 and gone() is not None
        settler.settle()
        assert settler.reclaims == 1 and gone() is None
        settler.stop()
    """)


def test_an_opening_after_the_loop_closed_is_let_go() -> None:
    run("""
        loop = asyncio.new_event_loop()
        settler = HeapSettler(loop)
        loop.close()
        settler.opened(), settler.closed()
    """)


def test_the_collectors_pauses_are_a_metric_and_a_collection_during_a_scrape_does_not_hang_it() -> None:
    """A collection starts inside whatever allocation crosses the threshold, on any thread: here while the scraping
    thread holds the registry's lock, or a metric's. A callback that took a metric's lock there (a Histogram's
    ``labels()``) would wait for ever."""
    run("""
        from prometheus_client import CollectorRegistry, Histogram, generate_latest
        from cartwheel.observability import CollectorPauses

        registry = CollectorRegistry()
        Histogram("other_seconds", "another metric", ["service"], registry=registry).labels("cart").observe(1)
        pauses = CollectorPauses("cart")
        registry.register(pauses)
        pauses.install()
        gc.collect()
        gc.collect(0)

        class CollectingLock:  # the registry's lock, with a collection taken while it is held
            def __init__(self, lock):
                self.lock = lock
            def __enter__(self):
                self.lock.acquire()
                gc.collect(0)
            def __exit__(self, *exc):
                self.lock.release()

        registry._lock = CollectingLock(registry._lock)
        for collector in list(registry._collector_to_names):  # and every metric's own (a Histogram's children)
            if hasattr(collector, "_lock"):
                collector._lock = CollectingLock(collector._lock)
        scraped = []
        scraper = threading.Thread(target=lambda: scraped.append(generate_latest(registry).decode()), daemon=True)
        scraper.start()
        scraper.join(10)
        assert scraped, "the scrape hung"
        text = scraped[0]
        assert 'cartwheel_gc_pause_seconds_count{generation="2",service="cart"} 1.0' in text, text
        assert 'cartwheel_gc_pause_seconds_bucket{generation="0",le="+Inf",service="cart"}' in text, text
        pauses.uninstall()
    """)
