"""Messages owned by the payments service, the only code that talks to Stripe.

- Requests (core request/reply, queue group ``payments``): :class:`CreateIntent`,
  :class:`ConfirmIntent`, :class:`CancelIntent`, :class:`RefundPayment`, and
  :class:`StripeWebhook` (the gateway forwards Stripe's raw body and signature untouched).
  Each is safe to retry: the Stripe call carries an idempotency key derived from the order.
- Events on the EVENTS stream, one per verified Stripe event that changes a payment, each
  carrying the ``order_id`` from the PaymentIntent's metadata. A Stripe event is turned into
  an event here once, however often Stripe (or an attacker replaying it) delivers it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, StrictInt, StringConstraints

from cartwheel import subjects
from cartwheel.contracts.base import Message

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
OrderRef = Annotated[str, StringConstraints(min_length=1, max_length=100)]
IntentId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
PaymentMethodId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,255}$")]
IntentStatus = Literal[
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
    "canceled",
    "succeeded",
]


# -- requests -------------------------------------------------------------------------------


class CreateIntent(Message):
    """A PaymentIntent for an order (idempotency key ``order-<order_id>``: a retry gets the same intent)."""

    subject: ClassVar[str] = subjects.PAYMENTS_INTENT_CREATE
    order_id: OrderRef
    amount_cents: Annotated[StrictInt, Field(ge=1)]
    currency: Currency
    email: str | None = None
    not_after: datetime | None = Field(None, description="Queued, not created after this (its order's reservation "
                                       "ends then: it could not be paid).")


class ConfirmIntent(Message):
    """Confirm the order's PaymentIntent with a payment method (server-side confirmation).

    ``pm_card_visa`` and Stripe's other test payment methods work against test keys and the
    embedded payment server. Declines are not errors: the answer's ``status`` and
    ``last_error`` say what happened, and the webhook that follows moves the order.
    """

    subject: ClassVar[str] = subjects.PAYMENTS_INTENT_CONFIRM
    order_id: OrderRef
    payment_intent_id: IntentId
    payment_method: PaymentMethodId
    return_url: str | None = Field(None, max_length=2000, description="Where a method that redirects the buyer (a "
                                   "bank's page) sends them back; Stripe wants one when the intent takes every "
                                   "method the account offers.")


class CancelIntent(Message):
    """Cancel an unpaid order's PaymentIntent (expired or cancelled order); a finished intent is left as is."""

    subject: ClassVar[str] = subjects.PAYMENTS_INTENT_CANCEL
    order_id: OrderRef
    payment_intent_id: IntentId


class RefundPayment(Message):
    """Refund a succeeded PaymentIntent in full (idempotency key ``refund-<order_id>``)."""

    subject: ClassVar[str] = subjects.PAYMENTS_REFUND
    order_id: OrderRef
    payment_intent_id: IntentId
    reason: Literal["requested_by_customer", "duplicate", "fraudulent"] | None = None


class CheckoutLine(BaseModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=250)]
    quantity: Annotated[StrictInt, Field(ge=1)]
    unit_amount_cents: Annotated[StrictInt, Field(ge=0)]


class CreateCheckoutSession(Message):
    """A Stripe Checkout Session (hosted payment page) for an order; one per order (a retry gets the same one).

    ``expires_at`` is when the page stops taking payment: before the order's reservation ends, so a payment
    made there always finds its stock held. Stripe takes 30 minutes to 24 hours from now.
    """

    subject: ClassVar[str] = subjects.PAYMENTS_CHECKOUT_CREATE
    order_id: OrderRef
    amount_cents: Annotated[StrictInt, Field(ge=1)]
    currency: Currency
    lines: list[CheckoutLine] = Field(min_length=1)
    email: str | None = None
    expires_at: datetime
    success_url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    cancel_url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class ExpireCheckoutSession(Message):
    """Close an unpaid order's checkout page (the order expired or was cancelled); a paid one is answered as is."""

    subject: ClassVar[str] = subjects.PAYMENTS_CHECKOUT_EXPIRE
    order_id: OrderRef
    checkout_session_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class StripeWebhook(Message):
    """``POST /webhooks/stripe`` as received: the body exactly as sent, and its ``Stripe-Signature``.

    Refused with ``invalid_signature`` (the gateway answers 400) when the signature does not
    verify, the body was changed, or the timestamp is older than the tolerance.
    """

    subject: ClassVar[str] = subjects.PAYMENTS_WEBHOOK
    payload: str = Field(description="The raw request body, decoded as UTF-8.")
    signature: str = Field("", description="The Stripe-Signature header.")


# -- replies --------------------------------------------------------------------------------


class IntentView(BaseModel):
    """A PaymentIntent as the shop needs it."""

    payment_intent_id: str
    client_secret: str | None = None
    status: IntentStatus
    amount_cents: int
    currency: str
    last_error: str | None = Field(None, description="Why the last attempt failed (a decline), if it did.")
    amount_received_cents: int | None = Field(None, description="What a succeeded intent took in, as Stripe said.")
    currency_received: str | None = None


class CheckoutSessionView(BaseModel):
    """A Checkout Session as the shop needs it: where to send the buyer, and what became of it."""

    checkout_session_id: str
    url: str | None = Field(None, description="Stripe's hosted payment page (None once the session is closed).")
    status: Literal["open", "complete", "expired"]
    payment_status: str = Field(description="Stripe's: unpaid, paid, no_payment_required.")
    expires_at: datetime
    payment_intent_id: str | None = None


class IntentQueued(BaseModel):
    """The answer to :class:`CreateIntent` when Stripe's rate limit is fully used: the intent is queued, and
    :class:`PaymentIntentCreated` (or :class:`PaymentNotStarted`) follows."""

    queued: Literal[True] = True
    order_id: str


class WebhookOutcome(BaseModel):
    event_id: str
    type: str
    duplicate: bool = Field(description="The event was seen before: nothing happened this time.")


# -- events ---------------------------------------------------------------------------------


class PaymentEvent(Message):
    """What a verified Stripe event said about an order's payment."""

    order_id: str
    payment_intent_id: str
    stripe_event_id: str
    amount_cents: int
    currency: str


class PaymentSucceeded(PaymentEvent):
    """``amount_cents``/``currency``: the intent as this shop created it; ``*_received``: what Stripe says came in."""

    subject: ClassVar[str] = subjects.PAYMENTS_SUCCEEDED
    amount_received_cents: int | None = Field(None, description="None from a sender that did not say (older events).")
    currency_received: str | None = None


class PaymentFailed(PaymentEvent):
    subject: ClassVar[str] = subjects.PAYMENTS_FAILED
    reason: str | None = None


class PaymentCanceled(PaymentEvent):
    subject: ClassVar[str] = subjects.PAYMENTS_CANCELED


class PaymentRefunded(PaymentEvent):
    subject: ClassVar[str] = subjects.PAYMENTS_REFUNDED
    amount_refunded_cents: int


class PaymentDisputed(PaymentEvent):
    """The buyer's bank disputes the payment (a chargeback): Stripe holds the money until the dispute closes."""

    subject: ClassVar[str] = subjects.PAYMENTS_DISPUTED
    dispute_id: str
    reason: str | None = None
    amount_disputed_cents: int


class PaymentDisputeClosed(PaymentEvent):
    """A dispute ended: ``won`` (the money stays; Stripe's ``won`` or ``warning_closed``) or lost (it is gone)."""

    subject: ClassVar[str] = subjects.PAYMENTS_DISPUTE_CLOSED
    dispute_id: str
    status: str = Field(description="Stripe's status of the closed dispute: won, lost, warning_closed.")
    won: bool


class PaymentRefundFailed(PaymentEvent):
    """A refund Stripe had accepted failed or was cancelled after all: that money did not go back."""

    subject: ClassVar[str] = subjects.PAYMENTS_REFUND_FAILED
    refund_id: str
    amount_not_refunded_cents: int
    reason: str | None = None


class RefundView(BaseModel):
    """The answer to :class:`RefundPayment`: the order's refund and its status at Stripe."""

    refund_id: str
    status: str = Field(description="Stripe's: succeeded, pending, requires_action, failed or canceled.")
    amount_cents: int


class IntentRequested(CreateIntent):
    """A :class:`CreateIntent` waiting for Stripe's rate limit to let it through: payments' own queue, kept on the
    EVENTS stream."""

    subject: ClassVar[str] = subjects.PAYMENTS_INTENT_REQUESTED


class PaymentIntentCreated(PaymentEvent):
    """A queued intent exists now: the order can be paid with ``client_secret``."""

    subject: ClassVar[str] = subjects.PAYMENTS_INTENT_CREATED
    client_secret: str | None = None
    status: IntentStatus


class CheckoutExpired(Message):
    """An order's checkout page closed unpaid (Stripe's ``checkout.session.expired``): the order can't be paid."""

    subject: ClassVar[str] = subjects.PAYMENTS_CHECKOUT_EXPIRED
    order_id: str
    checkout_session_id: str


class PaymentNotStarted(Message):
    """A queued intent could not be created, for good (Stripe refused it): the order cannot be paid."""

    subject: ClassVar[str] = subjects.PAYMENTS_NOT_STARTED
    order_id: str
    reason: str


class PaymentRequiresAction(PaymentEvent):
    """3-D Secure or another step only the buyer can take; the order keeps waiting for payment."""

    subject: ClassVar[str] = subjects.PAYMENTS_REQUIRES_ACTION
