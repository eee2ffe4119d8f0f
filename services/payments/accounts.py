"""Which Stripe account serves the tenant in hand: its own (a key kept in its own payments database), else the
installation's. Each account has its own rate limit at Stripe, so each gets its own pacer."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from cartwheel.db import make_engine
from cartwheel.service import Service
from cartwheel.tenants import context as tenant_context
from services.payments.models import StripeAccountRow
from services.payments.pacing import Pacer
from services.payments.stripe_api import PaymentMetrics, StripePayments

SECRET_KEY = re.compile(r"(sk|rk)_(test|live)_\w+")
RELOAD_S = 30.0
"""How soon a tenant's changed key (``cartwheel tenants stripe``) is used by a running payments service."""


@dataclass
class Account:
    api: StripePayments | None
    webhook_secret: str | None


@dataclass
class _Loaded:
    at: float
    key: str | None
    account: Account


class StripeAccounts:
    def __init__(self, service: Service, metrics: PaymentMetrics | None = None) -> None:
        settings = service.settings
        self.service = service
        secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
        self.installation = Account(StripePayments.from_settings(settings, metrics), secret)
        self._tenants: dict[str, _Loaded] = {}

    async def current(self) -> Account:
        """The account of the tenant whose work is in hand."""
        tenant = tenant_context.current(self.service.settings.tenant)
        if tenant == self.service.settings.tenant:
            return self.installation
        loaded = self._tenants.get(tenant)
        if loaded is not None and time.monotonic() - loaded.at < RELOAD_S:
            return loaded.account
        row = await self.service.db.read(_own_account)
        key = row[0] if row else None
        if loaded is not None and loaded.key == key:
            loaded.at, loaded.account.webhook_secret = time.monotonic(), row[1] if row else None
            return loaded.account
        if loaded is not None and loaded.account.api is not None and loaded.account.api is not self.installation.api:
            await loaded.account.api.close()
        account = self.installation if row is None else Account(self._api(row[0]), row[1])
        self._tenants[tenant] = _Loaded(time.monotonic(), key, account)
        return account

    def _api(self, secret_key: str) -> StripePayments:
        settings = self.service.settings
        pacer = Pacer(settings.stripe_requests_per_second / settings.payments_replicas)  # the account's own limit
        return StripePayments(secret_key, settings.stripe_api_base, None, pacer)

    async def close(self) -> None:
        apis = {id(a.account.api): a.account.api for a in self._tenants.values() if a.account.api is not None}
        if self.installation.api is not None:
            apis[id(self.installation.api)] = self.installation.api
        for api in apis.values():
            await api.close()


def _own_account(session: Session) -> tuple[str, str | None] | None:
    row = session.get(StripeAccountRow, 1)
    return (row.secret_key, row.webhook_secret) if row else None


def set_own_account(payments_url: str, secret_key: str, webhook_secret: str | None) -> None:
    """Give the tenant whose payments database is at ``payments_url`` its own Stripe account (``cartwheel tenants
    stripe``): the secret stays with the tenant's data, is exported and deleted with it, and never rides the bus."""
    if not SECRET_KEY.fullmatch(secret_key):
        raise ValueError("that is not a Stripe secret key (sk_test_..., sk_live_..., or a restricted rk_...)")
    if webhook_secret is not None and not webhook_secret.startswith("whsec_"):
        raise ValueError("a webhook signing secret starts with whsec_")
    _own_account_is(payments_url, StripeAccountRow(id=1, secret_key=secret_key, webhook_secret=webhook_secret,
                                                   updated_at=datetime.now(UTC)))


def remove_own_account(payments_url: str) -> None:
    """Back to the installation's account."""
    _own_account_is(payments_url, None)


def _own_account_is(url: str, row: StripeAccountRow | None) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            session.execute(delete(StripeAccountRow))
            if row is not None:
                session.add(row)
    finally:
        engine.dispose()
