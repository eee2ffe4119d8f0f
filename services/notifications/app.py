"""Wires the notifications service: a mail to the buyer as their order moves (paid, payment failed, refunded),
sent once per event over SMTP, or into the embedded catcher when no server is set."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from functools import partial
from urllib.parse import urlencode, urlsplit

from faststream.exceptions import NackMessage
from sqlalchemy.exc import IntegrityError

from cartwheel import downloads, subjects, unsubscribe
from cartwheel.bus import request
from cartwheel.contracts.cart import CartAbandoned
from cartwheel.contracts.notifications import (
    ListCaughtMail,
    ListSentMail,
    MailPage,
    ResendMail,
    SentMail,
    SentMails,
    Unsubscribe,
)
from cartwheel.contracts.orders import GetOrder, OrderStatusChanged, OrderView
from cartwheel.errors import DomainError, NotFound
from cartwheel.service import Service
from cartwheel.settings import Settings
from services.notifications import store
from services.notifications.mails import Mail, Shop, compose, compose_reminder, kind_of_move, mail_id
from services.notifications.smtp import SEND_TIMEOUT_S, Catcher, Refused, Server, Unreachable

ASK_TIMEOUT_S = 5.0
HOLD = timedelta(seconds=2 * SEND_TIMEOUT_S)  # a worker that died mid-send lets go of its mail after this ...
ACK_WAIT_S = 3 * SEND_TIMEOUT_S  # ... and an event is delivered again only after that (a send ends within 20 s)
BUSY_RETRY_S = 2.0
WORKERS = 8  # mails sent at once: a slow server holds up at most this many


class MailUnavailable(DomainError):
    code = "mail_unavailable"


class Notifications:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        url = self.settings.smtp_url
        self.server: Server | None = Server.from_url(url.get_secret_value()) if url else None
        self.catcher = None if url else Catcher(self._keep_caught)

    @property
    def _secret(self) -> str:
        """The installation's secret: it signs the unsubscribe and download links."""
        assert self.settings.secret is not None, "get_settings() fills the secret"
        return self.settings.secret.get_secret_value()

    async def start(self) -> None:
        if self.catcher is not None:
            self.server = await self.catcher.start()

    async def stop(self) -> None:
        if self.catcher is not None:
            await self.catcher.stop()

    def shop(self, tenant: str) -> Shop:
        """The shop's address as its buyers reach it (links in mails) and its locale (money)."""
        settings = self.settings
        entry = self.service.tenants.entry(tenant)
        locale = (entry.settings if entry else {}).get("locale", settings.locale)
        if entry is not None and entry.hosts:
            if settings.public_url:
                return Shop(f"{urlsplit(settings.public_url).scheme}://{entry.hosts[0]}", locale)
            return Shop(f"http://{entry.hosts[0]}:{settings.gateway_port}", locale)
        host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
        return Shop(settings.public_url or f"http://{host}:{settings.gateway_port}", locale)

    async def order_moved(self, event: OrderStatusChanged) -> None:
        kind = kind_of_move(event.previous, event.order.status)
        if kind is None or not event.order.email:
            return
        shop = self.shop(event.tenant)
        mail = compose(kind, event.order, shop, to=event.order.email, mail_id=mail_id(event.id, kind),
                       reason=event.reason if kind == "payment_failed" else None,
                       downloads=self.download_links(event.order, shop, event.tenant))
        # Unreachable: the event comes back later (Service.consume's growing wait); the others go on meanwhile.
        await self.deliver(mail, event.order.order_id, event.tenant)

    def download_links(self, order: OrderView, shop: Shop, tenant: str) -> dict[str, str]:
        """Signed links to a paid order's digital products, by product id (none for another order)."""
        if order.status not in ("paid", "fulfilled"):
            return {}
        expires = int(time.time()) + self.settings.download_link_seconds
        return {line.product_id: shop.url.rstrip("/") + downloads.path(self._secret, tenant, order.order_id,
                                                                       line.product_id, expires)
                for line in order.lines if line.digital}

    async def cart_abandoned(self, event: CartAbandoned) -> None:
        """One reminder per cart, to a signed-in shopper who has not said no to them."""
        if not event.email or not event.cart.items:
            return
        db = self.service.db.current()
        if await db.read(partial(store.unsubscribed, email=event.email)):
            return
        shop = self.shop(event.tenant)
        link = f"{shop.url.rstrip('/')}/unsubscribe?" + urlencode(
            {"token": unsubscribe.token(self._secret, event.tenant, event.email)})
        mail = compose_reminder(event.cart, shop, to=event.email, unsubscribe_url=link)
        await self.deliver(mail, f"cart:{event.cart.id}", event.tenant)

    async def stop_reminders(self, command: Unsubscribe) -> dict[str, bool]:
        await self.service.db.current().run(partial(store.unsubscribe, email=command.email))
        self.service.log.info("no more cart reminders to %s", command.email)
        return {"unsubscribed": True}

    async def deliver(self, mail: Mail, about: str, tenant: str) -> SentMail | None:
        """Send ``mail`` (``about``: an order's id, or ``cart:<id>``) unless it was sent (or refused for good)
        before. Raises :class:`Unreachable` after recording the attempt."""
        db = self.service.db.current()
        try:
            taken = await db.run(partial(store.claim, mail=mail, order_id=about, hold=HOLD))
        except IntegrityError:
            taken = "busy"  # another worker made its row a moment before
        if taken == "busy":
            raise NackMessage(delay=BUSY_RETRY_S)  # that worker sends it; this repeat comes back to find it done
        if taken == "done":
            return None
        assert self.server is not None
        try:
            await self.server.send(mail.message(self.settings.mail_from, tenant))
        except Refused as exc:
            self.service.log.warning("mail %s to %s refused for good: %s", mail.mail_id, mail.to, exc)
            return await db.run(partial(store.attempted, mail_id=mail.mail_id, status="failed", error=str(exc)))
        except Unreachable as exc:
            await db.run(partial(store.attempted, mail_id=mail.mail_id, status="sending", error=str(exc)))
            raise
        self.service.log.info("mail %s sent to %s", mail.mail_id, mail.to)
        return await db.run(partial(store.attempted, mail_id=mail.mail_id, status="sent"))

    async def list_caught(self, query: ListCaughtMail) -> MailPage:
        if self.catcher is None:
            return MailPage(items=[])
        items = await self.service.db.own.read(partial(store.caught, tenant=query.tenant, limit=query.limit,
                                                       to=query.to))
        return MailPage(items=items)

    async def list_sent(self, query: ListSentMail) -> SentMails:
        return SentMails(items=await self.service.db.current().read(partial(store.of_order, order_id=query.about)))

    async def resend(self, command: ResendMail) -> SentMail:
        """The mail again, as the order is now, under a new id (the first one stays as it was)."""
        first = await self.service.db.current().read(partial(store.one, mail_id=command.mail_id))
        if first is None or first.order_id != command.order_id:
            raise NotFound(f"order {command.order_id!r} has no mail {command.mail_id!r}", mail_id=command.mail_id)
        found = await request(self.service.broker.connection, GetOrder(order_id=command.order_id), ASK_TIMEOUT_S)
        order = OrderView.model_validate(found)
        again = f"{first.kind}.resent-{uuid.uuid4().hex[:12]}"
        shop = self.shop(command.tenant)
        mail = compose(first.kind, order, shop, to=order.email or first.to, mail_id=again,  # type: ignore[arg-type]
                       downloads=self.download_links(order, shop, command.tenant))
        try:
            sent = await self.deliver(mail, order.order_id, command.tenant)
        except Unreachable as exc:  # no event brings it back: the admin sends it again
            await self.service.db.current().run(partial(store.attempted, mail_id=again, status="failed",
                                                        error=f"not sent: {exc}"))
            raise MailUnavailable(f"the mail server did not take the mail: {exc}") from None
        assert sent is not None
        return sent

    async def _keep_caught(self, mail: dict[str, object]) -> None:
        db, keep = self.service.db.own, self.settings.mail_catcher_keep
        await db.run(partial(store.keep_caught, mail=mail, keep=keep))


class MisConfigured(SystemExit):
    """The service must not start: what to fix is in the message."""


def build(settings: Settings) -> Service:
    if settings.smtp_url is not None and settings.public_url is None:  # mails to buyers link to the shop
        raise MisConfigured("notifications: CARTWHEEL_SMTP_URL is set but CARTWHEEL_PUBLIC_URL is not: the mails' "
                            "links (orders, downloads, unsubscribe) would point at this machine; set the shop's "
                            "address")
    service = Service("notifications", settings)
    notifications = Notifications(service)
    service.on_start(notifications.start)
    service.on_stop(notifications.stop)
    service.handle(subjects.NOTIFICATIONS_MAIL_LIST, ListCaughtMail)(notifications.list_caught)
    service.handle(subjects.NOTIFICATIONS_MAIL_SENT, ListSentMail)(notifications.list_sent)
    service.handle(subjects.NOTIFICATIONS_MAIL_RESEND, ResendMail)(notifications.resend)
    service.handle(subjects.NOTIFICATIONS_UNSUBSCRIBE, Unsubscribe)(notifications.stop_reminders)
    events = {subjects.ORDERS_STATUS_CHANGED: (OrderStatusChanged, notifications.order_moved),
              subjects.CART_ABANDONED: (CartAbandoned, notifications.cart_abandoned)}
    for durable, subject in subjects.EVENT_CONSUMERS["notifications"].items():
        model, handler = events[subject]
        # From now: a shop that adds this service is not mailed the stream's month of history.
        service.consume(subject, model, durable=durable, workers=WORKERS, ack_wait=ACK_WAIT_S,  # type: ignore[arg-type]
                        from_now=True)(handler)
    return service
