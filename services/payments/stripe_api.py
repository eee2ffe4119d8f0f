"""The only module that imports ``stripe``: PaymentIntents and refunds through the official SDK, webhook signatures.

Calls go through the SDK's asynchronous methods on aiohttp, on the service's event loop: half the
CPU of its blocking client on a thread pool (1.56 → 0.83 ms per intent measured here), and no
thread hand-offs. Every call waits for its turn at the :class:`~services.payments.pacing.Pacer`
(Stripe's rate limit, kept here); a 429 that comes anyway holds every call back for Stripe's
``Retry-After`` (or a doubling backoff) and the call goes again. Stripe unreachable, still
rate-limiting, failing (5xx) or refusing our key is ``payment_provider_unavailable`` (retrying is
safe: each call that changes something carries an idempotency key); a call whose turn did not
come in the time its caller gave is :class:`Busy`. Stripe refusing a request is ``conflict``. A
card decline is no error: the intent comes back saying what happened. Objects come back as plain
dicts.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import stripe
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cartwheel import tracing
from cartwheel.contracts.payments import CreateCheckoutSession
from cartwheel.errors import DomainError, NotFound
from cartwheel.money import to_stripe
from cartwheel.settings import Settings
from services.payments.pacing import BACKGROUND, CHECKOUT, INTERACTIVE, PRIORITIES, Pacer

log = logging.getLogger(__name__)

TIMEOUT_S = 20.0
NETWORK_RETRIES = 1  # on top of the first try; every changing call is idempotent
WEBHOOK_TOLERANCE_S = 300  # Stripe's default: an older signature is a replay
RATE_LIMITED_TRIES = 6  # a call Stripe answers 429 goes again this often, each after the wait Stripe asks
RATE_LIMITED_WAIT_S = (0.5, 8.0)  # without a Retry-After: a doubling wait between these, with jitter
# Whatever the request: unreachable, rate-limited, or our key refused (configuration). A later retry may work.
UNAVAILABLE = (stripe.APIConnectionError, stripe.AuthenticationError, stripe.PermissionError)  # 429 is paced
DEFAULT_RATE = 80.0  # calls a second: below Stripe's live-mode limit of 100 (settings.stripe_requests_per_second)


def provider_unavailable(message: str) -> DomainError:
    return DomainError(message, code="payment_provider_unavailable")


class Busy(DomainError):
    """The call's turn at the rate limit did not come within the time its caller gave: nothing was sent."""

    def __init__(self, what: str) -> None:
        super().__init__(f"Stripe's rate limit is fully used: could not {what} now", code="payment_provider_busy")


def retry_after(headers: object, tries: int) -> float:
    """Seconds to wait after Stripe's 429: its ``Retry-After`` if it says, else a doubling wait with jitter."""
    try:
        said = float(headers.get("retry-after") or headers.get("Retry-After"))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        said = None
    if said is not None and said >= 0:
        return min(said, 60.0)
    low, high = RATE_LIMITED_WAIT_S
    return min(high, low * 2 ** tries) * random.uniform(0.5, 1.0)


def verify_webhook(payload: str, signature: str, secret: str | None) -> dict[str, Any]:
    """The event in a webhook body whose ``Stripe-Signature`` verifies with ``secret``; else ``invalid_signature``."""
    if not secret:
        raise DomainError("no Stripe webhook signing secret is configured", code="invalid_signature")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_S)
        event = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise DomainError(
            f"the Stripe signature does not verify: {exc.user_message}", code="invalid_signature"
        ) from None
    except ValueError:
        raise DomainError("the signed body is not JSON", code="invalid_signature") from None
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise DomainError("the signed body is not a Stripe event", code="invalid_signature")
    return event


STRIPE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)


class PaymentMetrics:
    """How Stripe answers (time and errors per operation) and what its webhooks bring (by type and result)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("cartwheel_stripe_request_duration_seconds", "Time of a call to Stripe, retries "
                                 "included", ["operation"], buckets=STRIPE_BUCKETS, registry=registry)
        self.errors = Counter("cartwheel_stripe_errors", "Calls to Stripe that failed, by kind: unavailable "
                              "(unreachable, 5xx, our key refused), rate_limited (429), not_found, refused, declined",
                              ["operation", "kind"], registry=registry)
        self.webhooks = Counter("cartwheel_webhook_events", "Stripe webhook events by type and result: applied, "
                                "duplicate, ignored (not this shop's payment), invalid_signature, failed",
                                ["type", "result"], registry=registry)
        self.rate_limited = Counter("cartwheel_stripe_rate_limited", "Calls Stripe answered 429 (each went again "
                                    "after the wait it asked)", ["operation"], registry=registry)
        self.turn_seconds = Histogram("cartwheel_stripe_turn_wait_seconds", "Time a call waited for its turn at "
                                      "the rate limit, by priority", ["priority"], buckets=STRIPE_BUCKETS,
                                      registry=registry)
        self.waiting = Gauge("cartwheel_stripe_calls_waiting", "Calls waiting for their turn at the rate limit, "
                             "by priority", ["priority"], registry=registry)


class StripePayments:
    """PaymentIntents and refunds of one Stripe account (or the embedded server at ``api_base``), paced."""

    def __init__(self, secret_key: str, api_base: str | None = None, metrics: PaymentMetrics | None = None,
                 pacer: Pacer | None = None) -> None:
        self.metrics = metrics
        self.pacer = pacer or Pacer(DEFAULT_RATE)
        self.http = stripe.AIOHTTPClient(timeout=TIMEOUT_S)  # its session opens on first use, on the running loop
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=NETWORK_RETRIES,
            http_client=self.http,
        )
        if metrics:
            for priority, name in enumerate(PRIORITIES):
                metrics.waiting.labels(name).set_function(lambda p=priority: self.pacer.waiting(p))

    async def close(self) -> None:
        await self.http.close_async()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: PaymentMetrics | None = None) -> StripePayments | None:
        """None when no secret key is configured: the service runs and refuses payment requests. Each replica
        takes its share of the installation's rate."""
        if settings.stripe_secret_key is None:
            return None
        pacer = Pacer(settings.stripe_requests_per_second / settings.payments_replicas)
        return cls(settings.stripe_secret_key.get_secret_value(), settings.stripe_api_base, metrics, pacer)

    async def create_intent(self, order_id: str, tenant: str, amount_cents: int, currency: str, key: str,
                            email: str | None = None, wait: float | None = None, priority: int = CHECKOUT) -> dict:
        """The order's new intent; :class:`Busy` if its turn does not come within ``wait`` seconds (None: however
        long), or Stripe answers 429 to a call with a ``wait``. A queued one goes at ``BACKGROUND`` priority."""
        try:
            amount = to_stripe(amount_cents, currency)  # Stripe's units: ISK in hundredths, MGA whole
        except ValueError as unpayable:  # a price saved before such prices were refused
            raise DomainError(str(unpayable), code="conflict") from None
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "metadata": {"order_id": order_id, "tenant": tenant},
            "automatic_payment_methods": {"enabled": True},  # what the account offers, as set in its dashboard
        }
        if email:
            params["receipt_email"] = email  # Stripe mails its receipt once the payment succeeds
        return await self._call("create a payment", self.client.v1.payment_intents.create_async, params, key=key,
                                priority=priority, wait=wait)

    async def create_checkout_session(self, ask: CreateCheckoutSession, key: str, wait: float) -> dict:
        """A hosted payment page for the order: its lines, the buyer's email, when it closes, where it sends the
        buyer back; the intent it makes carries the order in its metadata, as ours do."""
        currency = ask.currency.lower()
        try:
            lines = [{"quantity": line.quantity, "price_data": {
                "currency": currency, "unit_amount": to_stripe(line.unit_amount_cents, ask.currency),
                "product_data": {"name": line.name}}} for line in ask.lines]
        except ValueError as unpayable:
            raise DomainError(str(unpayable), code="conflict") from None
        metadata = {"order_id": ask.order_id, "tenant": ask.tenant}
        params: dict[str, Any] = {
            "mode": "payment",
            "payment_method_types": ["card"],  # one that completes paid: a delayed method completes unpaid
            "line_items": lines,
            "success_url": ask.success_url,
            "cancel_url": ask.cancel_url,
            "expires_at": int(ask.expires_at.timestamp()),
            "client_reference_id": ask.order_id,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata, **({"receipt_email": ask.email} if ask.email else {})},
            **({"customer_email": ask.email} if ask.email else {}),
        }
        return await self._call("open a checkout page", self.client.v1.checkout.sessions.create_async, params,
                                key=key, priority=CHECKOUT, wait=wait)

    async def retrieve_checkout_session(self, session_id: str) -> dict:
        return await self._call("read the checkout page", self.client.v1.checkout.sessions.retrieve_async,
                                session_id)

    async def expire_checkout_session(self, session_id: str) -> dict:
        return await self._call("close the checkout page", self.client.v1.checkout.sessions.expire_async,
                                session_id, priority=BACKGROUND)

    async def retrieve_intent(self, intent_id: str) -> dict:
        return await self._call("read the payment", self.client.v1.payment_intents.retrieve_async, intent_id)

    async def confirm_intent(self, intent_id: str, payment_method: str, key: str,
                             return_url: str | None = None) -> dict:
        """Confirm with ``payment_method``: set it, then confirm (valid on Stripe, and what every server takes);
        ``return_url`` for a method that sends the buyer to their bank's page (Stripe wants one)."""
        intents = self.client.v1.payment_intents
        try:
            method = {"payment_method": payment_method}
            await self._call("set the payment method", intents.update_async, intent_id, method, key=f"{key}-method")
            back = {"return_url": return_url} if return_url else None
            return await self._call("confirm the payment", intents.confirm_async, intent_id, back, key=key)
        except stripe.CardError as exc:  # a decline: the intent tells what happened
            declined = getattr(exc.error, "payment_intent", None)
            return declined.to_dict() if declined else await self.retrieve_intent(intent_id)

    async def cancel_intent(self, intent_id: str) -> dict:
        return await self._call("cancel the payment", self.client.v1.payment_intents.cancel_async, intent_id,
                                priority=BACKGROUND)

    async def refund(self, intent_id: str, order_id: str, reason: str | None, key: str) -> dict:
        """Refund the intent in full. ``reason`` goes to Stripe and the metadata; the embedded server refuses it."""
        params: dict[str, Any] = {"payment_intent": intent_id, "metadata": {"order_id": order_id}}
        refunds = self.client.v1.refunds
        if reason:
            params["metadata"]["reason"] = reason
            try:
                with_reason = {**params, "reason": reason}
                return await self._call("refund the payment", refunds.create_async, with_reason, key=key,
                                        priority=BACKGROUND)
            except DomainError as exc:
                if "Unexpected reason" not in exc.message:
                    raise
                log.info("the payment server takes no refund reason (localstripe): refunding %s without", intent_id)
        return await self._call("refund the payment", refunds.create_async, params, key=key, priority=BACKGROUND)

    async def _call(self, what: str, method: Callable[..., Awaitable[Any]], *args: Any, key: str | None = None,
                    priority: int = INTERACTIVE, wait: float | None = None) -> dict:
        with tracing.span(f"stripe: {what}", kind=tracing.CLIENT) as span:
            result = await self._paced(what, method, *args, key=key, priority=priority, wait=wait)
            if span.is_recording() and isinstance(result.get("id"), str):
                span.set_attribute("stripe.object_id", result["id"])
            return result

    async def _paced(self, what: str, method: Callable[..., Awaitable[Any]], *args: Any, key: str | None,
                     priority: int, wait: float | None) -> dict:
        """Send the call in its turn; after a 429, hold every call back as Stripe asks and send it again (a call
        with a ``wait`` is :class:`Busy` instead: its caller has somewhere else to put it)."""
        operation = f"{type(getattr(method, '__self__', None)).__name__.removesuffix('Service')}." \
                    f"{getattr(method, '__name__', 'call').removesuffix('_async')}"  # PaymentIntent.create
        for tries in range(RATE_LIMITED_TRIES):
            began = time.perf_counter()
            served = await self.pacer.turn(priority, wait)
            if self.metrics:  # the waits that ran out too: the longest are the ones to see
                self.metrics.turn_seconds.labels(PRIORITIES[priority]).observe(time.perf_counter() - began)
            if not served:
                raise Busy(what)
            try:
                return await self._send(what, operation, method, *args, key=key)
            except stripe.RateLimitError as exc:
                pause = retry_after(exc.headers, tries)
                self.pacer.hold(pause)
                if self.metrics:
                    self.metrics.rate_limited.labels(operation).inc()
                log.info("Stripe answered 429 to %s: every call waits %.2f s", operation, pause)
                if wait is not None:
                    raise Busy(what) from None
        raise provider_unavailable(f"Stripe kept answering 429 (rate limited): could not {what} now")

    async def _send(self, what: str, operation: str, method: Callable[..., Awaitable[Any]], *args: Any,
                    key: str | None = None) -> dict:
        started, kind = time.perf_counter(), ""
        try:
            result = await (method(*args, options={"idempotency_key": key}) if key else method(*args))
        except stripe.RateLimitError:
            kind = "rate_limited"
            raise
        except stripe.CardError:
            kind = "declined"
            raise
        except stripe.StripeError as exc:
            if exc.http_status == 404:
                kind = "not_found"
                raise NotFound(f"Stripe has no such object ({what}): {exc.user_message or exc}") from None
            # 409: another request with our idempotency key is still running (a retry overtook it).
            if isinstance(exc, UNAVAILABLE) or exc.http_status == 409 or (exc.http_status or 500) >= 500:
                kind = "unavailable"
                raise provider_unavailable(f"Stripe could not {what} now: {exc.user_message or exc}") from None
            kind = "refused"
            message = f"Stripe refused to {what}: {exc.user_message or exc}"
            raise DomainError(message, code="conflict", stripe_code=getattr(exc, "code", None)) from None
        finally:
            if self.metrics:
                self.metrics.seconds.labels(operation).observe(time.perf_counter() - started)
                if kind:
                    self.metrics.errors.labels(operation, kind).inc()
        return result.to_dict()
