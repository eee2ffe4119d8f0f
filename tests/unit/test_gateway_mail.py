"""The mail routes and admin pages over a fake bus (a fake notifications service)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import unsubscribe
from cartwheel.contracts.notifications import ListCaughtMail, ListSentMail, ResendMail, Unsubscribe
from cartwheel.errors import DomainError
from services.gateway.testing import FakeBus
from tests.unit import test_gateway_accounts, test_gateway_orders, test_gateway_web
from tests.unit.test_gateway_cart import PRODUCT, SECRET
from tests.unit.test_gateway_orders import TOKEN, Orders, checkout
from tests.unit.test_gateway_products import sent
from tests.unit.test_gateway_web import csrf_of, sign_in_admin

database_url = test_gateway_accounts.database_url
make_client = test_gateway_orders.make_client
shop, orders, client = test_gateway_web.shop, test_gateway_web.orders, test_gateway_web.client
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
AT = "2026-12-07T08:00:00Z"


class Mailer:
    """Answers like the notifications service."""

    def __init__(self) -> None:
        self.caught = [{"mail_id": 7, "to": ["ann@example.com"], "sender": "Shop <shop@localhost>",
                        "subject": "Your order ABC is confirmed", "text": "Thank you: 1 x Mug",
                        "html": '<p>Thank you <a href="http://shop/orders/x">"see"</a></p>', "received_at": AT}]
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.down = False

    def list_caught(self, message: ListCaughtMail) -> dict[str, Any]:
        return {"items": [m for m in self.caught if message.to in (None, *m["to"])][: message.limit]}

    def list_sent(self, message: ListSentMail) -> dict[str, Any]:
        return {"items": self.sent.get(message.order_id, [])}

    def resend(self, message: ResendMail) -> dict[str, Any]:
        if self.down:
            raise DomainError("the mail server did not take the mail: 421 busy", code="mail_unavailable")
        first = next(m for m in self.sent[message.order_id] if m["mail_id"] == message.mail_id)
        again = first | {"mail_id": first["mail_id"] + ".again", "attempts": 1}
        self.sent[message.order_id].append(again)
        return again


@pytest.fixture
def mailer() -> Mailer:
    return Mailer()


@pytest.fixture
def bus(shop: Any, orders: Orders, mailer: Mailer) -> FakeBus:
    fake = test_gateway_web.bus.__wrapped__(shop, orders)  # the pages' fake shop ...
    fake.handlers |= {ListCaughtMail: mailer.list_caught, ListSentMail: mailer.list_sent, ResendMail: mailer.resend}
    return fake  # ... and the notifications service


def sent_mail(order_id: str, to: str = "ann@example.com", status: str = "sent", **fields: Any) -> dict[str, Any]:
    return {"mail_id": f"order_confirmation.{order_id}", "kind": "order_confirmation", "order_id": order_id,
            "to": to, "subject": "Your order X is confirmed", "status": status, "attempts": 1, "error": None,
            "created_at": AT, "sent_at": AT if status == "sent" else None} | fields


def test_the_mail_routes_are_for_admins_and_check_what_they_are_given(client: FlaskClient, bus: FakeBus) -> None:
    assert client.get("/api/admin/mail").status_code == 401
    assert client.post("/api/admin/orders/ord_1/mails/x/resend").status_code == 401
    assert client.get("/api/admin/mail?limit=0", headers=ADMIN).status_code == 422
    assert client.get("/api/admin/mail?color=red", headers=ADMIN).status_code == 400  # an unknown parameter
    assert client.get("/api/admin/orders/not%20an%20id/mails", headers=ADMIN).status_code == 404
    assert client.post("/api/admin/orders/ord_1/mails/" + "x" * 201 + "/resend", headers=ADMIN).status_code == 404
    assert bus.sent == []
    listed = client.get("/api/admin/mail?to=ann@example.com&limit=5", headers=ADMIN)
    assert listed.status_code == 200 and listed.get_json()["items"][0]["mail_id"] == 7
    (asked,) = bus.sent
    assert (asked.to, asked.limit, asked.tenant) == ("ann@example.com", 5, "shop-1")


def test_a_resend_the_mail_server_refuses_is_a_503_with_retry_after(client: FlaskClient, mailer: Mailer) -> None:
    mailer.sent["ord_1"] = [sent_mail("ord_1")]
    mailer.down = True
    answer = client.post("/api/admin/orders/ord_1/mails/order_confirmation.ord_1/resend", headers=ADMIN)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.get_json()["error"]["code"] == "mail_unavailable"


def test_an_admin_sees_an_orders_mails_and_sends_one_again(make_client: Any, mailer: Mailer, bus: FakeBus) -> None:
    buyer = make_client()
    buyer.post("/api/cart/items", json={"product_id": PRODUCT, "quantity": 1})
    order_id = checkout(buyer).get_json()["order_id"]
    mailer.sent[order_id] = [sent_mail(order_id, status="failed", error="550 no such mailbox", attempts=1)]
    admin = make_client()
    sign_in_admin(admin)
    page = admin.get(f"/admin/orders/{order_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Your order X is confirmed" in html and "550 no such mailbox" in html

    answer = admin.post(f"/admin/orders/{order_id}/mails/order_confirmation.{order_id}/resend",
                        data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("?notice=resent")
    (resend,) = sent(bus, ResendMail)
    assert (resend.order_id, resend.mail_id) == (order_id, f"order_confirmation.{order_id}")
    after = admin.get(answer.headers["Location"]).get_data(as_text=True)
    assert "The mail was sent again." in after and after.count('data-testid="order-mail"') == 2

    mailer.down = True
    refused = admin.post(f"/admin/orders/{order_id}/mails/order_confirmation.{order_id}/resend",
                         data={"csrf_token": csrf_of(page)})
    assert refused.status_code == 503 and "421 busy" in refused.get_data(as_text=True)


def test_an_order_page_shows_without_its_mails_when_notifications_is_down(make_client: Any, bus: FakeBus) -> None:
    del bus.handlers[ListSentMail]
    buyer = make_client()
    buyer.post("/api/cart/items", json={"product_id": PRODUCT, "quantity": 1})
    order_id = checkout(buyer).get_json()["order_id"]
    admin = make_client()
    sign_in_admin(admin)
    page = admin.get(f"/admin/orders/{order_id}")
    assert page.status_code == 200 and "cannot be shown now" in page.get_data(as_text=True)


def test_the_mail_page_shows_each_caught_mail_with_its_html_boxed_in(make_client: Any, bus: FakeBus) -> None:
    admin = make_client()
    sign_in_admin(admin)
    html = admin.get("/admin/mail").get_data(as_text=True)
    assert "Your order ABC is confirmed" in html and "Thank you: 1 x Mug" in html
    assert 'sandbox srcdoc="&lt;p&gt;Thank you &lt;a href=&#34;http://shop/orders/x&#34;&gt;' in html  # no script
    assert admin.get("/admin/mail?to=bob@example.com").get_data(as_text=True).count('data-testid="caught-mail"') == 0
    assert sent(bus, ListCaughtMail)[-1].to == "bob@example.com"
    assert make_client().get("/admin/mail").status_code in (302, 303)  # no session: the sign-in page


# -- a reminder's unsubscribe link ------------------------------------------------------------------


def stopped(bus: FakeBus) -> list[str]:
    return [m.email for m in sent(bus, Unsubscribe)]


def test_an_unsubscribe_token_names_its_address_and_shop_only() -> None:
    token = unsubscribe.token(SECRET, "shop-1", "Ann@Example.com")
    assert unsubscribe.address(SECRET, "shop-1", token) == "ann@example.com"
    assert unsubscribe.address(SECRET, "shop-2", token) is None  # another shop's link
    assert unsubscribe.address("another secret", "shop-1", token) is None
    assert unsubscribe.address(SECRET, "shop-1", token[:-2] + "xx") is None
    assert unsubscribe.address(SECRET, "shop-1", "garbage") is None


def test_the_unsubscribe_route_tells_notifications_for_a_good_token_only(client: FlaskClient, bus: FakeBus) -> None:
    bus.handlers[Unsubscribe] = lambda m: {"unsubscribed": True}
    bad = client.post("/api/unsubscribe", json={"token": unsubscribe.token(SECRET, "shop-2", "ann@example.com")})
    assert bad.status_code == 422 and bad.get_json()["error"]["fields"][0]["field"] == "token"
    assert client.post("/api/unsubscribe", json={}).status_code in (400, 422)
    assert stopped(bus) == []
    good = client.post("/api/unsubscribe", json={"token": unsubscribe.token(SECRET, "shop-1", "ann@example.com")})
    assert good.status_code == 200 and good.get_json() == {"email": "ann@example.com"}
    assert stopped(bus) == ["ann@example.com"]


def test_the_unsubscribe_page_asks_first_and_a_mail_clients_one_click_post_works(client: FlaskClient,
                                                                                   bus: FakeBus) -> None:
    bus.handlers[Unsubscribe] = lambda m: {"unsubscribed": True}
    token = unsubscribe.token(SECRET, "shop-1", "ann@example.com")
    asked = client.get("/unsubscribe", query_string={"token": token})
    assert asked.status_code == 200 and "No more cart reminders" in asked.get_data(as_text=True)
    assert stopped(bus) == []  # opening the link (a mail scanner does) changes nothing
    done = client.post("/unsubscribe", data={"token": token})
    assert done.status_code == 200 and 'data-testid="unsubscribed"' in done.get_data(as_text=True)
    one_click = client.post("/unsubscribe", query_string={"token": token}, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    assert stopped(bus) == ["ann@example.com", "ann@example.com"]
    refused = client.post("/unsubscribe", data={"token": "forged"})
    assert refused.status_code == 422 and "not valid here" in refused.get_data(as_text=True)
