"""The notifications service against the session's NATS, a real SMTP conversation and the embedded catcher:
one mail per event however often it comes, a refused address that holds nothing up, a server that was down."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import nats
import pytest

from cartwheel import subjects, unsubscribe
from cartwheel.bus import request
from cartwheel.contracts.base import utcnow
from cartwheel.contracts.cart import CartAbandoned, CartLine, CartView
from cartwheel.contracts.notifications import ListCaughtMail, ListSentMail, ResendMail, Unsubscribe
from cartwheel.contracts.orders import OrderLine, OrderStatusChanged, OrderView
from cartwheel.errors import DomainError
from cartwheel.natsserver import free_port
from services.notifications.app import BUSY_RETRY_S
from services.notifications.smtp import Catcher

TIMEOUT = 20.0


def order(email: str, status: str = "paid", **fields: Any) -> OrderView:
    now = utcnow()
    line = OrderLine(product_id="p1", sku="MUG-1", name="Blue mug", quantity=2, unit_price_cents=1250,
                     line_total_cents=2500)
    return OrderView(order_id=f"ord_{uuid.uuid4().hex}", status=status, lines=[line], total_cents=2500,  # type: ignore[arg-type]
                     currency="EUR", email=email, created_at=now - timedelta(minutes=1), updated_at=now, **fields)


def moved(view: OrderView, previous: str = "awaiting_payment", reason: str | None = None) -> OrderStatusChanged:
    return OrderStatusChanged(order=view, previous=previous, reason=reason)  # type: ignore[arg-type]


async def publish(nc: nats.NATS, *events: OrderStatusChanged | CartAbandoned) -> None:
    js = nc.jetstream()
    for event in events:
        await js.publish(event.subject, event.model_dump_json().encode())


def until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)
    return found


def caught(client: Any, to: str) -> list[dict[str, Any]]:
    return client.run(lambda nc: request(nc, ListCaughtMail(to=to), 5.0))["items"]


def sent(client: Any, order_id: str | None = None, cart_id: str | None = None) -> list[dict[str, Any]]:
    return client.run(lambda nc: request(nc, ListSentMail(order_id=order_id, cart_id=cart_id), 5.0))["items"]


def address() -> str:
    return f"buyer-{uuid.uuid4().hex[:8]}@example.com"


def test_a_paid_order_sends_one_confirmation_into_the_catcher_however_often_its_event_comes(
        database_url: str, start_service, client) -> None:
    start_service("notifications", notifications_database_url=database_url)  # SQLite and PostgreSQL
    to = address()
    view = order(to)
    event = moved(view)
    client.run(lambda nc: publish(nc, event, event, event))  # delivered three times: one mail

    mails = until(lambda: caught(client, to), "the confirmation in the catcher")
    time.sleep(BUSY_RETRY_S + 1.0)  # the repeats held back while the first was sent have had their turn
    mails = caught(client, to)
    assert len(mails) == 1, mails
    mail = mails[0]
    number = view.order_id.removeprefix("ord_")[:10].upper()
    assert mail["subject"] == f"Your order {number} is confirmed"
    assert mail["to"] == [to] and mail["sender"] == "Cartwheel shop <shop@localhost>"
    assert "2 x Blue mug  €25.00" in mail["text"]
    assert f"http://127.0.0.1:8080/orders/{view.order_id}" in mail["text"]
    assert "<td>Blue mug</td>" in mail["html"]
    assert f'href="http://127.0.0.1:8080/orders/{view.order_id}"' in mail["html"]
    [record] = sent(client, view.order_id)
    assert (record["kind"], record["status"], record["attempts"], record["to"]) == ("order_confirmation", "sent", 1, to)
    assert record["mail_id"] == f"order_confirmation.{event.id}"


def test_moves_that_send_nothing_and_an_order_without_an_address(start_service, client):
    start_service("notifications")
    to = address()
    quiet = [moved(order(to, status="awaiting_payment"), previous="reserved"),
             moved(order(to, status="paid"), previous="disputed"),  # a dispute won: confirmed long ago
             moved(order(None, status="paid"))]  # type: ignore[arg-type]
    failed = moved(order(to, status="payment_failed"), reason="Your card was declined.")
    client.run(lambda nc: publish(nc, *quiet, failed))

    [mail] = until(lambda: caught(client, to), "the payment-failed mail")
    assert "did not go through" in mail["subject"]
    assert "Your card was declined." in mail["text"]
    time.sleep(1.0)
    assert len(caught(client, to)) == 1
    assert all(sent(client, e.order.order_id) == [] for e in quiet)


def test_an_address_with_non_ascii_letters_gets_its_mail(start_service, client) -> None:
    start_service("notifications")
    to = f"josé-{uuid.uuid4().hex[:6]}@exämple.com"
    event = moved(order(to))
    client.run(lambda nc: publish(nc, event))
    [mail] = until(lambda: caught(client, to), "the mail (SMTPUTF8)")
    assert mail["to"] == [to]


def test_a_refused_address_is_marked_failed_and_holds_up_no_other_mail(start_service, client):
    start_service("notifications")
    bad, good = f"nobody-{uuid.uuid4().hex[:6]}@shop.invalid", address()
    refused, fine = moved(order(bad)), moved(order(good))
    client.run(lambda nc: publish(nc, refused, fine))

    until(lambda: caught(client, good), "the good address's mail")
    [record] = until(lambda: [r for r in sent(client, refused.order.order_id) if r["status"] != "sending"],
                     "the refused mail's record")
    assert record["status"] == "failed" and record["attempts"] == 1
    assert "550" in record["error"] and bad in record["error"]
    assert caught(client, bad) == []


def test_a_mail_server_that_was_down_gets_the_mail_once_it_is_back(database_url: str, start_service, client) -> None:
    port = free_port()
    start_service("notifications", smtp_url=f"smtp://127.0.0.1:{port}", public_url="https://shop.example.com",
                  notifications_database_url=database_url)
    to = address()
    event = moved(order(to))
    client.run(lambda nc: publish(nc, event))
    [record] = until(lambda: [r for r in sent(client, event.order.order_id) if r["attempts"] >= 1],
                     "the first attempt")
    assert record["status"] == "sending" and "Connect" in record["error"]

    received: list[bytes] = []
    number = event.order.order_id.removeprefix("ord_")[:10].upper()

    async def serve() -> None:  # a mail server of its own, on the port the service was given, up for 15 s
        async def keep(mail: dict[str, Any]) -> None:
            received.append(mail["subject"].encode())

        server = Catcher(keep, port=port)
        await server.start()
        try:
            deadline = time.monotonic() + 15
            while not any(number.encode() in subject for subject in received) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            await server.stop()

    asyncio.run(serve())
    assert received.count(f"Your order {number} is confirmed".encode()) == 1, received  # (others: earlier tests')
    [record] = sent(client, event.order.order_id)
    assert record["status"] == "sent" and record["attempts"] >= 2


def test_an_admin_resends_a_mail_as_the_order_is_now(start_service, client):
    start_service("notifications")
    to = address()
    view = order(to)
    event = moved(view)
    client.run(lambda nc: publish(nc, event))
    [first] = until(lambda: sent(client, view.order_id), "the first mail")
    refunded = view.model_copy(update={"status": "paid", "email": to})

    async def resend(nc: nats.NATS) -> Any:
        async def answer(msg: Any) -> None:  # the orders service, as far as this test needs it
            await msg.respond(b'{"ok": true, "data": ' + refunded.model_dump_json().encode() + b"}")

        sub = await nc.subscribe(subjects.ORDERS_GET, cb=answer)
        try:
            again = await request(nc, ResendMail(order_id=view.order_id, mail_id=first["mail_id"]), 10.0)
            with pytest.raises(DomainError) as unknown:
                await request(nc, ResendMail(order_id=view.order_id, mail_id="order_confirmation.nope"), 10.0)
            return again, unknown.value
        finally:
            await sub.unsubscribe()

    again, unknown = client.run(resend)
    assert again["status"] == "sent" and again["mail_id"] != first["mail_id"]
    assert again["mail_id"].startswith("order_confirmation.resent-")
    assert unknown.code == "not_found"
    assert len(caught(client, to)) == 2
    assert [m["mail_id"] for m in sent(client, view.order_id)] == [first["mail_id"], again["mail_id"]]


def test_the_catcher_keeps_the_newest_mails_and_files_them_by_shop(start_service, client):
    start_service("notifications", mail_catcher_keep=3)
    to = address()
    events = [moved(order(to)) for _ in range(5)]
    client.run(lambda nc: publish(nc, *events))
    until(lambda: all(sent(client, e.order.order_id) and sent(client, e.order.order_id)[0]["status"] == "sent"
                      for e in events), "five mails sent")
    assert len(caught(client, to)) == 3  # of five
    other = client.run(lambda nc: request(nc, ListCaughtMail(to=to, tenant="someone-else"), 5.0))["items"]
    assert other == []



# -- an abandoned cart's reminder -------------------------------------------------------------------


def abandoned(to: str | None, cart_id: str | None = None, items: int = 1) -> CartAbandoned:
    lines = [CartLine(product_id=f"p{i}", sku=f"S{i}", name=f"Mug {i}", quantity=1, unit_price_cents=900,
                      line_total_cents=900) for i in range(items)]
    cart = CartView(id=cart_id or f"cart-{uuid.uuid4().hex[:12]}", items=lines, item_count=items,
                    total_cents=900 * items, currency="EUR", status="abandoned")
    return CartAbandoned(cart=cart, email=to)


def test_an_abandoned_cart_gets_one_reminder_and_its_unsubscribe_link_ends_them(start_service, client) -> None:
    start_service("notifications")
    to = address()
    first = abandoned(to, items=2)
    anonymous, empty = abandoned(None), abandoned(to, items=0)
    client.run(lambda nc: publish(nc, first, anonymous, empty))
    [mail] = until(lambda: caught(client, to), "the reminder")
    again = abandoned(to, cart_id=first.cart.id, items=3)  # the same cart, edited and abandoned again later
    client.run(lambda nc: publish(nc, again))
    assert mail["subject"] == "You left 2 items in your cart"
    assert "2 x" not in mail["text"] and "1 x Mug 0  €9.00" in mail["text"] and "Total  €18.00" in mail["text"]
    assert "http://127.0.0.1:8080/cart" in mail["text"]
    link = re.search(r"http://127\.0\.0\.1:8080/unsubscribe\?token=(\S+)", mail["text"])
    assert link and unsubscribe.address("s" * 32, "default", link.group(1)) == to
    time.sleep(BUSY_RETRY_S + 1.0)
    assert len(caught(client, to)) == 1  # once per cart
    assert [r["status"] for r in sent(client, cart_id=first.cart.id)] == ["sent"]

    client.run(lambda nc: request(nc, Unsubscribe(email=to.upper()), 5.0))
    later = abandoned(to)
    order_mail = moved(order(to))  # mails about orders still go
    client.run(lambda nc: publish(nc, later, order_mail))
    until(lambda: len(caught(client, to)) == 2, "the order's mail")
    time.sleep(1.0)
    assert caught(client, to)[0]["subject"].endswith("is confirmed")  # the newest
    assert sent(client, cart_id=later.cart.id) == []
