"""The mails the shop sends, through the notifications service: what the embedded catcher caught, the mails
of an order, sending one again, and a reminder's unsubscribe link."""

from __future__ import annotations

from pydantic import BaseModel, TypeAdapter

from cartwheel import unsubscribe
from cartwheel.contracts.notifications import (
    ListCaughtMail,
    ListSentMail,
    MailPage,
    MailQuery,
    ResendMail,
    SentMail,
    SentMails,
    Unsubscribe,
    UnsubscribeBody,
)
from cartwheel.contracts.orders import OrderId
from cartwheel.errors import NotFound
from services.gateway.api import Routes
from services.gateway.cart import NO_STORE
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.cookies import installation_secret, is_valid
from services.gateway.errors import invalid_value

routes = Routes(tag="admin")
RESEND_TIMEOUT_S = 30.0  # the mail server's whole conversation may take 20 s (services/notifications/smtp.py)
_ORDER_ID = TypeAdapter(OrderId)


@routes.get(
    "/api/admin/mail",
    summary="The mails the embedded mail catcher caught for this shop, newest first (empty with a real SMTP "
    "server set)",
    query=MailQuery,
    response=MailPage,
    errors=(503,),
    auth="admin",
)
def caught_mail(query: MailQuery) -> tuple[MailPage, dict[str, str]]:
    message = ListCaughtMail(tenant=current_tenant(), to=query.to, limit=query.limit)
    return MailPage.model_validate(gateway().bus.request(message)), NO_STORE


@routes.get(
    "/api/admin/orders/{order_id}/mails",
    summary="The mails sent to an order's buyer, oldest first, each with its status",
    response=SentMails,
    errors=(404, 503),
    auth="admin",
)
def order_mails(order_id: str) -> tuple[SentMails, dict[str, str]]:
    message = ListSentMail(tenant=current_tenant(), order_id=_order_id(order_id))
    return SentMails.model_validate(gateway().bus.request(message)), NO_STORE


@routes.post(
    "/api/admin/orders/{order_id}/mails/{mail_id}/resend",
    summary="Send one of an order's mails again, as the order is now (a new mail; 503 when the mail server "
    "does not take it)",
    response=SentMail,
    errors=(404, 503),
    auth="admin",
)
def resend_mail(order_id: str, mail_id: str) -> tuple[SentMail, dict[str, str]]:
    if len(mail_id) > 200:
        raise NotFound("no such mail")
    message = ResendMail(tenant=current_tenant(), order_id=_order_id(order_id), mail_id=mail_id)
    sent = gateway().bus.request(message, timeout=RESEND_TIMEOUT_S)
    return SentMail.model_validate(sent), NO_STORE


def _order_id(order_id: str) -> str:
    if not is_valid(_ORDER_ID, order_id):
        raise NotFound("no such order")
    return order_id


class Unsubscribed(BaseModel):
    email: str


@routes.post(
    "/api/unsubscribe",
    summary="The unsubscribe link of a cart reminder: that address gets no more reminders from this shop (mails "
    "about its orders still go); 422 for a token that is not this shop's",
    body=UnsubscribeBody,
    response=Unsubscribed,
    errors=(422, 503),
    tag="shop",
)
def stop_reminders(body: UnsubscribeBody) -> tuple[Unsubscribed, dict[str, str]]:
    ctx = gateway()
    email = unsubscribe.address(installation_secret(), current_tenant(), body.token)
    if email is None:
        raise invalid_value("token", "this unsubscribe link is not valid here (altered, or another shop's)")
    ctx.bus.request(Unsubscribe(tenant=current_tenant(), email=email))
    return Unsubscribed(email=email), NO_STORE
