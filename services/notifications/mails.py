"""Which mail an order's move sends, and the mail itself (subject, text and HTML, from Jinja templates).

Pure: no I/O. A mail's id is its event's id and kind, so a repeated event finds the mail it already
sent; the id is also the mail's ``Message-ID``, so even a mail sent twice (a crash between the SMTP
server's yes and our record of it) reads as one in the buyer's client.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cartwheel.contracts.base import utcnow
from cartwheel.contracts.cart import CartView
from cartwheel.contracts.notifications import MailKind
from cartwheel.contracts.orders import OrderStatus, OrderView, order_number
from cartwheel.money import money

TENANT_HEADER = "X-Cartwheel-Tenant"
"""Whose mail it is: the embedded catcher files it under that shop."""
MAIL_ID_HEADER = "X-Cartwheel-Mail-Id"

SUBJECTS: dict[MailKind, str] = {
    "order_confirmation": "Your order {number} is confirmed",
    "payment_failed": "Your payment for order {number} did not go through",
    "refund": "Your refund for order {number}",
    "cart_reminder": "You left {count} in your cart",
}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,  # an included block of lines ends its line
)


def kind_of_move(previous: OrderStatus, status: OrderStatus) -> MailKind | None:
    """The mail an order moving from ``previous`` to ``status`` sends its buyer (None: none)."""
    if status == "paid" and previous != "disputed":  # a dispute won: the buyer had their confirmation
        return "order_confirmation"
    if status == "payment_failed":
        return "payment_failed"
    if status == "refunded":
        return "refund"
    return None


def mail_id(event_id: str, kind: MailKind) -> str:
    return f"{kind}.{event_id}"


@dataclass(frozen=True)
class Shop:
    """Who the mail is from, as the buyer knows the shop: its address (links) and locale (money)."""

    url: str
    locale: str = "en"


@dataclass(frozen=True)
class Mail:
    mail_id: str
    kind: MailKind
    to: str
    subject: str
    text: str
    html: str
    unsubscribe_url: str | None = None

    def message(self, sender: str, tenant: str) -> EmailMessage:
        """As it goes out: text and HTML alternatives, our id as its Message-ID."""
        message = EmailMessage()
        message["From"] = sender
        message["To"] = self.to
        message["Subject"] = self.subject
        message["Date"] = format_datetime(utcnow())
        domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
        message["Message-ID"] = f"<{self.mail_id}@{domain}>"
        message[TENANT_HEADER] = tenant
        message[MAIL_ID_HEADER] = self.mail_id
        if self.unsubscribe_url:  # one click in the mail client unsubscribes (RFC 8058)
            message["List-Unsubscribe"] = f"<{self.unsubscribe_url}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        return message


def compose(kind: MailKind, order: OrderView, shop: Shop, *, to: str, mail_id: str, reason: str | None = None,
            downloads: dict[str, str] | None = None) -> Mail:
    """The mail of ``kind`` about ``order`` as it is now; ``downloads``: the links of its digital products (full
    URLs, by product id)."""
    number = order_number(order.order_id)
    context = {
        "order": order,
        "number": number,
        "order_url": f"{shop.url.rstrip('/')}/orders/{order.order_id}",
        "shop_url": shop.url,
        "reason": reason or order.payment.last_error,
        "money": lambda cents: money(cents, order.currency, shop.locale),
        "downloads": [(line, downloads[line.product_id]) for line in order.lines
                      if downloads and line.product_id in downloads],
    }
    text = _templates.get_template(f"{kind}.txt").render(context)
    html = _templates.get_template(f"{kind}.html").render(context)
    return Mail(mail_id, kind, to, SUBJECTS[kind].format(number=number), text, html)


def cart_mail_id(cart_id: str) -> str:
    """Once per cart: abandoned again later, the same cart gets no second reminder."""
    return f"cart_reminder.{cart_id}"


def compose_reminder(cart: CartView, shop: Shop, *, to: str, unsubscribe_url: str) -> Mail:
    """The one reminder of an abandoned cart: its lines, a link back to it, and a link that ends reminders."""
    count = f"{cart.item_count} item" if cart.item_count == 1 else f"{cart.item_count} items"
    context = {
        "cart": cart,
        "count": count,
        "cart_url": f"{shop.url.rstrip('/')}/cart",
        "shop_url": shop.url,
        "unsubscribe_url": unsubscribe_url,
        "money": lambda cents: money(cents, cart.currency, shop.locale),
    }
    text = _templates.get_template("cart_reminder.txt").render(context)
    html = _templates.get_template("cart_reminder.html").render(context)
    return Mail(cart_mail_id(cart.id), "cart_reminder", to, SUBJECTS["cart_reminder"].format(count=count), text, html,
                unsubscribe_url)
