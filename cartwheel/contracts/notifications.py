"""Contracts of the notifications service: the mails it sent about an order, and what its mail catcher caught."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cartwheel import subjects
from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import CartId
from cartwheel.contracts.orders import OrderId

MailKind = Literal["order_confirmation", "payment_failed", "refund", "cart_reminder"]
MailStatus = Literal["sending", "sent", "failed"]


class SentMail(BaseModel):
    """One mail the shop sent (or tried to) about an order."""

    mail_id: str = Field(description="Stable per event and kind: a repeat of the event never sends it twice.")
    kind: MailKind
    order_id: str = Field(description="The order it is about; a cart reminder: `cart:<cart id>`.")
    to: str
    subject: str
    status: MailStatus = Field(description="`failed`: the server refused it for good (a bad address); the "
                               "error says why. A server that was down is tried again, with a growing wait.")
    attempts: int
    error: str | None = None
    created_at: datetime
    sent_at: datetime | None = None


class CaughtMail(BaseModel):
    """A mail the embedded catcher received (no real server set: nothing left the machine)."""

    mail_id: int
    to: list[str]
    sender: str
    subject: str
    text: str
    html: str | None = None
    received_at: datetime


class MailPage(BaseModel):
    items: list[CaughtMail]


class SentMails(BaseModel):
    items: list[SentMail]


class MailQuery(BaseModel):
    """``GET /api/admin/mail?to=&limit=``."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(None, max_length=320, description="Only mails to this address.")
    limit: int = Field(50, ge=1, le=200)


class ListCaughtMail(Message):
    """The tenant's newest caught mails first (only while the embedded catcher is in use)."""

    subject: ClassVar[str] = subjects.NOTIFICATIONS_MAIL_LIST
    limit: int = Field(50, ge=1, le=200)
    to: str | None = Field(None, max_length=320, description="Only mails to this address.")


class ListSentMail(Message):
    """The mails sent about ``order_id`` (or the reminder of ``cart_id``), oldest first."""

    subject: ClassVar[str] = subjects.NOTIFICATIONS_MAIL_SENT
    order_id: OrderId | None = None
    cart_id: CartId | None = None

    @property
    def about(self) -> str:
        return self.order_id or f"cart:{self.cart_id}"


class ResendMail(Message):
    """Send ``mail_id`` again, as the order is now (an admin's button): a new mail, with its own id."""

    subject: ClassVar[str] = subjects.NOTIFICATIONS_MAIL_RESEND
    order_id: OrderId
    mail_id: str = Field(max_length=200)


class UnsubscribeBody(BaseModel):
    """``POST /api/unsubscribe``: the token of a reminder's unsubscribe link."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=1000)


class Unsubscribe(Message):
    """``email`` gets no more cart reminders from this shop (mails about orders still go out)."""

    subject: ClassVar[str] = subjects.NOTIFICATIONS_UNSUBSCRIBE
    email: str = Field(max_length=320)
