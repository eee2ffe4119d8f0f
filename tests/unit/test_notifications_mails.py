"""Which mail an order's move sends and what it says: pure, no SMTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cartwheel.contracts.orders import OrderLine, OrderView
from services.notifications.mails import MAIL_ID_HEADER, TENANT_HEADER, Shop, compose, kind_of_move, mail_id
from services.notifications.smtp import Server

AT = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def order(**fields: object) -> OrderView:
    line = OrderLine(product_id="p1", sku="S1", name="<b>Mug</b> & co", quantity=3, unit_price_cents=1250,
                     line_total_cents=3750)
    values = {"order_id": "ord_0123456789abcdef", "status": "paid", "lines": [line], "total_cents": 3750,
              "currency": "EUR", "email": "ann@example.com", "created_at": AT, "updated_at": AT} | fields
    return OrderView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("previous", "status", "kind"), [
    ("awaiting_payment", "paid", "order_confirmation"),
    ("expired", "paid", "order_confirmation"),  # a slow bank: paid after all
    ("disputed", "paid", None),  # a dispute won: the buyer was told long ago
    ("awaiting_payment", "payment_failed", "payment_failed"),
    ("paid", "refunded", "refund"),
    ("cancelled", "refunded", "refund"),
    ("reserved", "awaiting_payment", None),
    ("paid", "fulfilled", None),
    ("awaiting_payment", "expired", None),
])
def test_which_moves_send_a_mail(previous: str, status: str, kind: str | None) -> None:
    assert kind_of_move(previous, status) == kind  # type: ignore[arg-type]


def test_a_confirmation_lists_the_lines_in_the_shops_locale_and_escapes_them_in_html() -> None:
    mail = compose("order_confirmation", order(), Shop("https://shop.example.com", "de_DE"), to="ann@example.com",
                   mail_id="order_confirmation.e1")
    assert mail.subject == "Your order 0123456789 is confirmed"
    assert "3 x <b>Mug</b> & co  37,50\xa0€" in mail.text
    assert "https://shop.example.com/orders/ord_0123456789abcdef" in mail.text
    assert "&lt;b&gt;Mug&lt;/b&gt; &amp; co" in mail.html and "<b>Mug</b>" not in mail.html
    assert 'href="https://shop.example.com/orders/ord_0123456789abcdef"' in mail.html


def test_a_failed_payment_says_why_and_a_refund_how_much() -> None:
    shop = Shop("http://127.0.0.1:8080")
    failed = compose("payment_failed", order(status="payment_failed"), shop, to="a@b.c", mail_id="m",
                     reason="Your card was declined.")
    assert "Your card was declined." in failed.text and "Your card was declined." in failed.html
    refund = compose("refund", order(status="refunded", refunded_cents=3750, currency="JPY", total_cents=3750),
                     shop, to="a@b.c", mail_id="m")
    assert "¥3,750 is on its way back" in refund.text


def test_the_message_has_both_parts_and_an_id_a_repeat_keeps() -> None:
    mail = compose("order_confirmation", order(), Shop("http://s"), to="ann@example.com",
                   mail_id=mail_id("evt-1", "order_confirmation"))
    first, second = mail.message("Shop <shop@example.com>", "acme"), mail.message("Shop <shop@example.com>", "acme")
    assert first["Message-ID"] == second["Message-ID"] == "<order_confirmation.evt-1@example.com>"
    assert (first[TENANT_HEADER], first[MAIL_ID_HEADER], first["To"]) == ("acme", mail.mail_id, "ann@example.com")
    assert [part.get_content_type() for part in first.iter_parts()] == ["text/plain", "text/html"]


def test_a_mail_server_from_its_url() -> None:
    assert Server.from_url("smtp://shop%40example.com:p%3Ass@mail.example.com:2525") == Server(
        "mail.example.com", 2525, "shop@example.com", "p:ss", False)
    assert Server.from_url("smtps://mail.example.com") == Server("mail.example.com", 465, None, None, True)
    assert Server.from_url("smtp://mail.example.com").port == 587


def test_the_smtp_url_setting_is_checked_and_kept_secret() -> None:
    from pydantic import ValidationError

    from cartwheel.settings import Settings

    with pytest.raises(ValidationError, match="smtp://"):
        Settings(smtp_url="http://mail.example.com")
    assert Settings(smtp_url="").smtp_url is None  # Compose's unset variable: the embedded catcher
    assert "p4ss" not in repr(Settings(smtp_url="smtp://u:p4ss@mail.example.com"))


def test_with_a_mail_server_the_service_needs_the_shops_address() -> None:
    from cartwheel.settings import Settings
    from services.notifications.app import MisConfigured, build

    with pytest.raises(MisConfigured, match="CARTWHEEL_PUBLIC_URL"):  # its mails' links would point at 127.0.0.1
        build(Settings(smtp_url="smtp://u:p@mail.example.com", admin_token="t" * 24, secret="s" * 32))


def test_a_confirmation_of_digital_products_carries_their_download_links() -> None:
    paid = order(lines=[OrderLine(product_id="f1", sku="G", name="Guide", quantity=1, unit_price_cents=900,
                                  line_total_cents=900, digital=True)], total_cents=900)
    url = "http://s/api/downloads/ord_0123456789abcdef/f1?expires=9&sig=ab"
    mail = compose("order_confirmation", paid, Shop("http://s"), to="a@b.c", mail_id="m", downloads={"f1": url})
    assert f"Guide: {url}" in mail.text and "Your downloads" in mail.text
    assert f'<a href="{url.replace("&", "&amp;")}">Guide</a>' in mail.html
    plain = compose("order_confirmation", order(), Shop("http://s"), to="a@b.c", mail_id="m")
    assert "downloads" not in plain.text.lower()
