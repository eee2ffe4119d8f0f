"""A flash sale over HTTP, and what it must end with: exactly the stock sold, every buyer answered, nothing twice."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from cartwheel.supervisor import System
from tests.faults.shop import wait_all_up
from tests.helpers import random_sku

BUYERS = 48
STOCK = 24
ARRIVALS = 6.0  # seconds over which the buyers arrive
GIVE_UP = 90.0  # a buyer still unanswered this long after arriving fails the test
HOLDS_STOCK = ("pending", "reserved", "awaiting_payment")
RETRY = (408, 429, 503)  # answers that ask the buyer to try again (API.md); the same key makes it safe


@dataclass
class Buyer:
    session: requests.Session
    key: str
    arrives: float
    tries: int = 0
    order_id: str | None = None
    sold_out: bool = False
    refused: list[str] = field(default_factory=list)  # what went wrong on the way (retried)
    wrong: str | None = None  # an answer a shop must not give (a 500, ...)
    waited_to_start: float = 0.0  # seconds its first visit (an add to cart) took, retries included
    answered_at: float | None = None


@dataclass
class SaleResult:
    buyers: list[Buyer]
    answers: list[float]  # moments (monotonic) at which any buyer got a final answer
    started: float

    def longest_unanswered(self) -> float:
        """The longest stretch while some buyer waited in which no buyer got an answer."""
        waiting = sorted((b.arrives, b.answered_at or b.arrives) for b in self.buyers)
        moments = sorted(self.answers)
        longest = 0.0
        for arrived, answered in waiting:  # for each buyer: the longest gap between answers while it waited
            last = arrived
            for at in moments:
                if at <= arrived:
                    continue
                if at > answered:
                    break
                longest = max(longest, at - last)
                last = at
        return longest


def admin(shop: System) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {shop.admin_token}"
    return session


def admin_read(shop: System, path: str, **params: Any) -> Any:
    """An admin's GET, asked again while it answers 503 (30 s at most). Every process alive again is not every
    process listening: a replica the fault killed last is still starting, and a full run met all three inventory
    replicas restarting at once right after the sale ("inventory.stock.get: no service is listening")."""
    deadline = time.monotonic() + 30
    while True:
        answer = admin(shop).get(f"{shop.base_url}{path}", params=params, timeout=30)
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    return answer.json()


def new_product(shop: System, stock: int) -> str:
    body = {"sku": random_sku(), "name": "Flash sale", "price_cents": 1500, "currency": "EUR", "stock": stock}
    made = admin(shop).post(f"{shop.base_url}/api/admin/products", json=body, timeout=30)
    assert made.status_code == 201, made.text
    product_id = str(made.json()["id"])
    deadline = time.monotonic() + 30
    while requests.get(f"{shop.base_url}/api/products/{product_id}", timeout=10).json().get("available") != stock:
        assert time.monotonic() < deadline, "the product's stock never showed up"
        time.sleep(0.1)
    return product_id


def buyers_with_carts(shop: System, filler: str) -> list[Buyer]:
    """Buyers who have been to the shop (a cart cookie: a buy-now retry is recognised by it)."""
    def one(i: int) -> Buyer:
        session, began = requests.Session(), time.monotonic()
        while True:  # as a shopper would: a 503 (the cart lane still recovering from the last fault) is tried again
            added = session.post(f"{shop.base_url}/api/cart/items", json={"product_id": filler, "quantity": 1},
                                 timeout=30)
            if added.status_code not in RETRY or time.monotonic() - began > GIVE_UP:
                break
            time.sleep(0.2)
        assert added.status_code == 200, added.text
        buyer = Buyer(session, f"fault-{random_sku()}-{i}", arrives=random.uniform(0.0, ARRIVALS))
        buyer.waited_to_start = time.monotonic() - began
        return buyer

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(BUYERS)))


def flash_sale(shop: System, product_id: str, buyers: list[Buyer], fault: Callable[[float], None]) -> SaleResult:
    """The buyers arrive over ARRIVALS s and buy one unit each; ``fault(started)`` runs beside them."""
    answers: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()
    for buyer in buyers:
        buyer.arrives += started

    def buy(buyer: Buyer) -> None:
        time.sleep(max(0.0, buyer.arrives - time.monotonic()))
        body = {"items": [{"product_id": product_id, "quantity": 1}]}
        while time.monotonic() - buyer.arrives < GIVE_UP:
            buyer.tries += 1
            try:
                answer = buyer.session.post(f"{shop.base_url}/api/checkout", json=body, timeout=15,
                                            headers={"Idempotency-Key": buyer.key})
            except requests.RequestException as exc:
                buyer.refused.append(type(exc).__name__)
                time.sleep(0.2)
                continue
            if answer.status_code == 201:
                buyer.order_id = answer.json()["order_id"]
            elif answer.status_code == 409 and answer.json().get("error", {}).get("code") == "out_of_stock":
                buyer.sold_out = True
            elif answer.status_code in RETRY:
                buyer.refused.append(f"{answer.status_code} {answer.text[:120]}")
                time.sleep(0.2)
                continue
            else:  # anything else is a wrong answer: a 500 says the shop broke, not that it is busy
                buyer.wrong = f"{answer.status_code} {answer.text[:200]}"
            if buyer.wrong is None:
                buyer.answered_at = time.monotonic()
                with lock:
                    answers.append(buyer.answered_at)
            return

    failed: list[BaseException] = []

    def faulting_thread() -> None:
        try:
            fault(started)
        except BaseException as exc:  # the sale's checks would pass without the fault: say it did not happen
            failed.append(exc)

    faulting = threading.Thread(target=faulting_thread, name="fault")
    faulting.start()
    try:
        with ThreadPoolExecutor(len(buyers)) as pool:
            list(pool.map(buy, buyers))
    finally:
        faulting.join()
    if failed:
        raise AssertionError(f"the fault did not happen: {failed[0]!r}") from failed[0]
    return SaleResult(buyers, answers, started)


def orders_holding(shop: System, product_id: str) -> int:
    """Orders that hold units of ``product_id``, from the admin's order list."""
    held = 0
    for status in HOLDS_STOCK:
        cursor = None
        while True:
            page = admin_read(shop, "/api/admin/orders", status=status, limit=100,
                              **({"cursor": cursor} if cursor else {}))
            held += sum(any(line["product_id"] == product_id for line in o["lines"]) for o in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return held


def check_the_sale(shop: System, product_id: str, sale: SaleResult, fault: str) -> dict[str, Any]:
    wrong = [b.wrong for b in sale.buyers if b.wrong]
    assert not wrong, f"{len(wrong)} buyers got a wrong answer, such as {wrong[0]}"
    unanswered = [b for b in sale.buyers if b.answered_at is None]
    assert not unanswered, f"{len(unanswered)} buyers never answered: {[b.refused[-3:] for b in unanswered][:3]}"
    wait_all_up(shop)  # what the fault killed is back (the admin's reads below need inventory)
    orders = {b.order_id for b in sale.buyers if b.order_id}
    assert len(orders) == sum(1 for b in sale.buyers if b.order_id), "two buyers got the same order"
    assert len(orders) == STOCK, f"{len(orders)} orders for {STOCK} units"
    assert sum(b.sold_out for b in sale.buyers) == BUYERS - STOCK
    level = admin_read(shop, f"/api/admin/inventory/{product_id}")
    assert (level["on_hand"], level["reserved"], level["available"]) == (STOCK, STOCK, 0), level
    deadline = time.monotonic() + 30
    while (held := orders_holding(shop, product_id)) != STOCK and time.monotonic() < deadline:
        time.sleep(0.5)  # an order's status follows its reservation by an event
    assert held == STOCK, f"{held} orders hold units of the product, for {STOCK} units"
    figures = {"fault": fault, "database": "postgresql" if shop.postgres else "sqlite",
               "nats_servers": len(shop.nats_nodes),
               "buyers": BUYERS, "stock": STOCK, "orders": len(orders),
               "retried_buyers": sum(1 for b in sale.buyers if b.refused),
               "retries": sum(len(b.refused) for b in sale.buyers),
               "retried_for": dict(Counter(r[:90] for b in sale.buyers for r in b.refused).most_common(4)),
               "longest_unanswered_s": round(sale.longest_unanswered(), 2),
               "slowest_cart_add_before_s": round(max(b.waited_to_start for b in sale.buyers), 2),
               "slowest_buyer_s": round(max((b.answered_at or 0) - b.arrives for b in sale.buyers), 2)}
    print(f"\nfault figures: {json.dumps(figures)}")
    return figures


