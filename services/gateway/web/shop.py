"""Storefront pages: products, a product, the cart, sign in, my orders, an order, a reminder's unsubscribe link. Actions
(add, pay, ...) are made by ``static/shop.js`` against the JSON API; these handlers render the first view."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from cartwheel.contracts.base import MAX_PAGE_CURSOR
from services.gateway import downloads
from services.gateway.context import gateway, tenant_settings
from services.gateway.cookies import orders_from_cookie
from services.gateway.web import stripejs
from services.gateway.web.internal import Answer, call

pages = Blueprint("shop", __name__)

SORTS = {
    "": "Best match",
    "newest": "Newest",
    "price_asc": "Price, low to high",
    "price_desc": "Price, high to low",
    "name": "Name",
}
FINAL = frozenset({"paid", "fulfilled", "cancelled", "expired", "needs_review", "disputed", "dispute_lost",
                   "refunded"})  # not payment_failed: another card may still pay it until the reservation ends
PAYABLE = frozenset({"awaiting_payment", "payment_failed"})
CARD_PAYABLE = PAYABLE | {"reserved"}  # its intent waits behind Stripe's rate limit: "Preparing payment…"
PAYMENT_METHODS = {"pm_card_visa": "Visa test card (succeeds)", "pm_card_chargeCustomerFail": "Test card (declined)"}
PAGE_SIZE = 24


@pages.get("/")
def products() -> str:
    search = {name: request.args.get(name, "").strip()[:200] for name in ("q", "category", "sort")}
    search["cursor"] = request.args.get("cursor", "").strip()[:MAX_PAGE_CURSOR]
    answer, note = _search(search)
    listing = answer.or_raise()
    # "Best match" ranks a search's results; without words to match, the list is newest first, and says so.
    sorts = SORTS if search["q"] else {value: label for value, label in SORTS.items() if value}
    sorted_by = search["sort"] if search["sort"] in sorts else next(iter(sorts))
    return render_template("shop/products.html", listing=listing, search=search, sorts=sorts, sorted_by=sorted_by,
                           note=note, signed_in=_who())


@pages.get("/products/<id_or_sku>")
def product(id_or_sku: str) -> str:
    found = call("GET", f"/api/products/{id_or_sku}").or_raise()
    return render_template("shop/product.html", product=found, signed_in=_who())


@pages.get("/cart")
def cart() -> str:
    return render_template("shop/cart.html", cart=call("GET", "/api/cart").or_raise(), signed_in=_who())


@pages.get("/signin")
def signin() -> str:
    return render_template("shop/signin.html", signed_in=_who())


@pages.get("/orders")
def my_orders() -> str:
    """A signed-in shopper's orders, a page at a time; otherwise the orders this browser placed (its cookie)."""
    who = _who()
    if who is not None:
        cursor = request.args.get("cursor", "")[:MAX_PAGE_CURSOR]
        listing = call("GET", "/api/orders", query={"cursor": cursor, "limit": PAGE_SIZE}).or_raise()
    else:
        found = [call("GET", f"/api/orders/{order_id}") for order_id in orders_from_cookie()]
        for answer in found:
            if answer.status != 404:  # one gone is left out; the orders service not answering is an error page
                answer.or_raise()
        listing = {"items": [answer.data for answer in found if answer.ok], "next_cursor": None}
    links = {order["order_id"]: downloads.links(order) for order in listing["items"]}
    return render_template("shop/orders.html", listing=listing, downloads=links, signed_in=who)


@pages.get("/orders/<order_id>")
def order(order_id: str) -> str:
    found = call("GET", f"/api/orders/{order_id}").or_raise()
    hosted = found["payment"].get("checkout_session_id") is not None  # paid on Stripe's checkout page
    # None: test methods, paid through our API
    card = None if hosted else stripejs.configured(gateway().settings, tenant_settings())
    payable = CARD_PAYABLE if card else PAYABLE
    if card and found["status"] in payable:
        stripejs.loaded_on_this_page(card)
    return render_template("shop/order.html", order=found, final=FINAL, methods=PAYMENT_METHODS, card=card,
                           payable=payable, hosted=hosted, returned=request.args.get("checkout"),
                           downloads=downloads.links(found), signed_in=_who())


@pages.get("/unsubscribe")
def unsubscribe() -> str:
    """A reminder's link asks first: a mail scanner that opens every link unsubscribes no one."""
    return render_template("shop/unsubscribe.html", token=request.args.get("token", "")[:1000], done=None,
                           refused=None, signed_in=_who())


@pages.post("/unsubscribe")
def unsubscribe_now() -> tuple[str, int]:
    """The page's button, or a mail client's one-click unsubscribe (RFC 8058: the link's URL, POSTed)."""
    token = (request.form.get("token") or request.args.get("token", ""))[:1000]
    answer = call("POST", "/api/unsubscribe", json={"token": token})
    refused = None if answer.ok else (answer.field_errors().get("token") or answer.message)
    page = render_template("shop/unsubscribe.html", token=token, done=answer.data if answer.ok else None,
                           refused=refused, signed_in=_who())
    return page, answer.status if not answer.ok else 200


def _search(search: dict[str, str]) -> tuple[Answer, str | None]:
    """Products for the search; filters the API refuses (an older catalog) are dropped with a note.

    A "more products" link whose cursor the shop no longer accepts (edited, or from before a secret
    rotation) shows the first page of the same search: the shopper asked for products, not an error.
    """
    answer = call("GET", "/api/products", query={**search, "limit": PAGE_SIZE})
    if answer.status == 422 and "cursor" in answer.field_errors():
        first = call("GET", "/api/products", query={**search, "cursor": "", "limit": PAGE_SIZE})
        return first, "That page link no longer works; here is the first page."
    if answer.status in (400, 422) and (search["category"] or search["sort"]):
        kept = {**search, "category": "", "sort": ""}
        note = "Filtering and sorting are not available here yet; showing every match."
        return call("GET", "/api/products", query={**kept, "limit": PAGE_SIZE}), note
    return answer, None


def _who() -> dict[str, Any] | None:
    """The signed-in shopper, or None (also when the accounts database does not answer)."""
    me = call("GET", "/api/auth/me")
    return me.data if me.ok else None
