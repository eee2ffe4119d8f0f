"""Twenty tabs edit one cart at once: the outcome is exactly one-after-another in the order the cart lane took them."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import TIMEOUT, product


@dataclass(frozen=True)
class Edit:
    method: str  # "add", "set" or "remove"
    product_id: str
    quantity: int = 0

    def send(self, base: str, cookie: str) -> requests.Response:
        cookies = {"cart": cookie}
        if self.method == "add":
            body = {"product_id": self.product_id, "quantity": self.quantity}
            return requests.post(f"{base}/api/cart/items", json=body, cookies=cookies, timeout=TIMEOUT)
        url = f"{base}/api/cart/items/{self.product_id}"
        if self.method == "set":
            return requests.patch(url, json={"quantity": self.quantity}, cookies=cookies, timeout=TIMEOUT)
        return requests.delete(url, cookies=cookies, timeout=TIMEOUT)

    def apply(self, lines: dict[str, int]) -> dict[str, int] | None:
        """The cart after this edit, applied alone to ``lines``; None where the cart refuses it (404)."""
        if self.method == "add":
            return {**lines, self.product_id: lines.get(self.product_id, 0) + self.quantity}
        if self.product_id not in lines:
            return None
        if self.method == "remove" or self.quantity == 0:
            return {k: v for k, v in lines.items() if k != self.product_id}
        return {**lines, self.product_id: self.quantity}


def as_lines(cart: dict[str, Any]) -> dict[str, int]:
    return {item["product_id"]: item["quantity"] for item in cart["items"]}


def test_twenty_tabs_end_exactly_as_their_edits_applied_one_after_another(system: System) -> None:
    tea, mug, pot = (product(system, stock=500)["id"] for _ in range(3))
    first = requests.post(f"{system.base_url}/api/cart/items", json={"product_id": tea, "quantity": 1}, timeout=TIMEOUT)
    cookie, start = first.cookies["cart"], as_lines(first.json())
    edits = [Edit("add", tea, 1)] * 5 + [Edit("add", mug, 2)] * 4 + [Edit("add", pot, 1)] * 3
    edits += [Edit("set", tea, q) for q in (3, 7, 11, 13)] + [Edit("set", mug, 0), Edit("remove", pot)]
    edits += [Edit("remove", mug), Edit("set", pot, 5)]
    random.Random(20).shuffle(edits)

    with ThreadPoolExecutor(len(edits)) as tabs:
        answers = list(tabs.map(lambda e: e.send(system.base_url, cookie), edits))

    assert {a.status_code for a in answers} <= {200, 404}, [a.text for a in answers if a.status_code not in (200, 404)]
    # Each 200 carries the cart right after its edit; the lane stamped them in the order it applied them.
    done = sorted(((a.json()["updated_at"], e, as_lines(a.json())) for e, a in zip(edits, answers, strict=True)
                   if a.status_code == 200), key=lambda step: step[0])
    assert len(done) >= 12  # every add succeeds (stock 500)
    states, lines = [start], start
    for _, edit, seen in done:
        lines = edit.apply(lines)
        assert lines == seen, f"{edit} after {states[-1]} should give {lines}, the cart said {seen}"
        states.append(lines)
    for edit, answer in zip(edits, answers, strict=True):  # a refusal happened where its line was absent
        if answer.status_code == 404:
            assert any(edit.apply(s) is None for s in states), edit
    final = requests.get(f"{system.base_url}/api/cart", cookies={"cart": cookie}, timeout=TIMEOUT).json()
    assert as_lines(final) == lines
