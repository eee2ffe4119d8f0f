"""``cartwheel demo-checkout``: a shopper's whole checkout against a running shop, over its HTTP API.

Adds an available product to a new cart, checks out (stock reserved, a PaymentIntent made),
pays with a Stripe test payment method, and follows the order until the payment's webhook
has moved it to ``paid``. Works offline against ``cartwheel up`` (the embedded payment server)
and against Stripe in test mode.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from cartwheel.money import money

FINAL = {"paid", "fulfilled", "payment_failed", "needs_review", "disputed", "dispute_lost", "cancelled", "expired",
         "refunded"}


class DemoFailed(RuntimeError):
    pass


class Shopper:
    """One browser: a cookie jar and JSON requests."""

    def __init__(self, base_url: str, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise DemoFailed(f"{method} {path}: HTTP {error.code} {detail}") from None
        except urllib.error.URLError as error:
            raise DemoFailed(f"{method} {path}: {error.reason} (is the shop running? `make run`)") from None


def demo_checkout(base_url: str, payment_method: str = "pm_card_visa", say: Callable[[str], None] = print,
                  wait_s: float = 30.0) -> dict[str, Any]:
    """Run the checkout; the order as it ended. Raises :class:`DemoFailed` with what went wrong."""
    shopper = Shopper(base_url)
    products = shopper.call("GET", "/api/products?limit=50")["items"]
    product = next((p for p in products if p.get("active") and (p.get("available") or 0) > 0), None)
    if product is None:
        raise DemoFailed("no product with stock to buy (restock one in the admin API)")
    shopper.call("POST", "/api/cart/items", {"product_id": product["id"], "quantity": 1})
    say(f"added 1 x {product['name']} ({money(product['price_cents'], product['currency'])}) to a new cart")
    order = shopper.call("POST", "/api/checkout", {}, {"Idempotency-Key": uuid.uuid4().hex})
    order_id = order["order_id"]
    say(f"order {order_id}: {order['status']}, total {money(order['total_cents'], order['currency'])}, "
        f"payment intent {order['payment']['payment_intent_id']}")
    paid = shopper.call("POST", f"/api/orders/{order_id}/pay", {"payment_method": payment_method})
    say(f"paid with {payment_method}: order {paid['status']}, payment {paid['payment'].get('status')}")
    seen, deadline = paid["status"], time.monotonic() + wait_s
    while seen not in FINAL and time.monotonic() < deadline:
        time.sleep(0.25)
        current = shopper.call("GET", f"/api/orders/{order_id}")
        if current["status"] != seen:
            seen = current["status"]
            say(f"order {order_id}: {seen}")
    final = shopper.call("GET", f"/api/orders/{order_id}")
    say("history: " + " → ".join(h["status"] for h in final.get("history", [])))
    if final["status"] not in ("paid", "fulfilled"):
        raise DemoFailed(f"the order ended {final['status']}: {final['payment'].get('last_error') or 'no payment'}")
    return final
