"""All configuration, read from ``CARTWHEEL_*`` environment variables in one place.

Defaults are safe for one laptop: loopback addresses, SQLite files under ``var/``, and
secrets generated once and kept in ``var/secrets.json`` (mode 0600), never hard-coded.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cartwheel.files import private_dir, write_private
from cartwheel.money import known_locale

SERVICES: tuple[str, ...] = ("catalog", "cart", "inventory", "orders", "payments", "notifications")
"""Backend services, each with its own process and database (the gateway is separate)."""
DATABASES: tuple[str, ...] = (*SERVICES, "gateway")
"""Everything with its own database and Alembic history: the services and the gateway (accounts)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARTWHEEL_", extra="ignore")

    var_dir: Path = Field(Path("var"), description="Where SQLite files, NATS data and generated secrets live.")
    # Not 4222: the embedded server must not collide with a NATS a developer already runs there.
    nats_url: str = Field("nats://127.0.0.1:4223", description="NATS server(s), comma-separated.")
    embedded_nats: bool = Field(
        True, description="`cartwheel up` starts its own nats-server on the port of `nats_url`."
    )
    nats_nkey_file: Path | None = Field(
        None,
        description="File holding this process's NATS NKey seed (a mounted Secret); "
        "default: var/nats-keys/<service>.nk when `cartwheel up` made it, else no credentials.",
    )
    nats_tls_ca: Path | None = Field(None, description="CA file that signs the NATS servers' certificates (TLS on).")
    nats_tls_cert: Path | None = Field(None, description="Client certificate for NATS servers that verify clients.")
    nats_tls_key: Path | None = Field(None, description="Key of `nats_tls_cert`.")
    stream_replicas: int = Field(
        1, ge=1, le=5, description="JetStream replicas for streams and buckets (3 on a cluster)."
    )

    catalog_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/catalog.db")
    cart_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/cart.db")
    inventory_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/inventory.db")
    orders_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/orders.db")
    payments_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/payments.db")
    notifications_database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/notifications.db")
    gateway_database_url: str | None = Field(
        None, description="Accounts and sessions. Default: sqlite:///<var_dir>/gateway.db"
    )

    gateway_host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    gateway_port: int = Field(8080, ge=1, le=65535, description="Port the gateway serves HTTP on.")
    gateway_workers: int = Field(2, ge=1, le=64, description="Gateway worker processes (gevent).")
    metrics_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="Port of a service's /metrics and /healthz; `cartwheel up` gives service i port+i; 0 disables.",
    )

    metrics_host: str = Field("127.0.0.1", description="Address of the services' metrics port (0.0.0.0 in containers).")

    public_openapi: bool = Field(
        True, description="/openapi.json for anyone (the API's public contract); false: for the admin token only."
    )

    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API; generated into var/ if unset."
    )
    secret: SecretStr | None = Field(None, description="Key that signs cookies; generated into var/ if unset.")
    cookie_secure: bool = Field(
        True, description="Cookies carry `Secure` (HTTPS only); `cartwheel up` turns it off for plain http."
    )

    session_max_age_seconds: int = Field(
        30 * 86400, ge=60, description="A sign-in lasts this long (cookie Max-Age and server-side expiry)."
    )
    login_failure_window_seconds: int = Field(
        900, ge=1, description="Failed sign-ins (and registrations) are counted over this sliding window."
    )
    login_max_failures_per_email: int = Field(
        5, ge=1, description="Failed sign-ins per account from one client address in the window (a stranger's guesses "
        "never lock the owner out)."
    )
    login_max_failures_per_ip: int = Field(20, ge=1, description="Failed sign-ins per client address in the window.")
    register_max_per_ip: int = Field(10, ge=1, description="Registrations per client address in the same window.")
    trusted_proxies: int = Field(
        0,
        ge=0,
        le=10,
        description="Proxies in front of the gateway whose X-Forwarded-For to believe (0: use the peer address).",
    )

    gateway_max_requests_per_address: int = Field(
        128, ge=1, description="Requests (SSE streams included) one client address may have in flight per gateway "
        "worker; beyond, 429 at once."
    )
    request_body_seconds: float = Field(
        10.0, gt=0, description="A request body must arrive within this, plus its size at `request_body_min_rate`."
    )
    request_body_min_rate: int = Field(
        64 * 1024, ge=1024, description="Bytes per second a large body may take to arrive (slower: 408)."
    )
    sse_max_per_cart: int = Field(8, ge=1, description="Open cart event streams per cart per gateway worker.")
    sse_max_per_address: int = Field(
        32, ge=1, description="Open cart event streams per client address per gateway worker."
    )

    cart_abandon_seconds: float = Field(
        1800, gt=0, description="A cart untouched this long is abandoned (events.cart.abandoned)."
    )
    cart_forget_seconds: float = Field(
        30 * 86400, gt=0, description="An anonymous cart untouched this long is deleted (its alarm fires then)."
    )

    lane_command_retention_seconds: float = Field(
        7 * 86400, ge=1, description="Applied lane command ids are remembered this long (retries get the first reply)."
    )

    stripe_secret_key: SecretStr | None = Field(
        None, description="Stripe secret key; unset: `cartwheel up` starts the embedded payment server (localstripe)."
    )
    stripe_api_base: str | None = Field(None, description="Stripe API address (the embedded server's, or a proxy).")
    stripe_webhook_secret: SecretStr | None = Field(
        None, description="Signing secret of the Stripe webhook endpoint; generated for the embedded server."
    )
    public_url: str | None = Field(
        None, pattern=r"^https?://[^/?#]+/?$", description="The shop's address as buyers reach it (`https://shop."
        "example.com`): where Stripe's checkout page sends them back. Unset: no hosted checkout (503)."
    )
    smtp_url: SecretStr | None = Field(
        None, description="Where the notifications service sends mail: `smtp://user:password@"
        "host:587` (STARTTLS when the server offers it) or `smtps://host:465` (TLS from the start). Unset: an "
        "embedded mail catcher on loopback takes every mail, shown at /admin/mail (nothing leaves the machine).",
    )
    digital_file_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1024**3,
                                        description="The largest file a digital product may have (an upload is "
                                        "held in the gateway's memory while it is stored).")
    download_link_seconds: int = Field(7 * 86400, ge=1, description="How long a buyer's download link works.")
    downloads_per_line: int = Field(5, ge=1, le=10_000, description="Downloads of each digital product an order "
                                    "allows (a range request that resumes a download does not count).")
    mail_from: str = Field("Cartwheel shop <shop@localhost>", min_length=3, max_length=320,
                           description="The From of every mail the shop sends.")
    mail_catcher_keep: int = Field(500, ge=1, le=100_000,
                                   description="Caught mails kept by the embedded catcher (the oldest go first).")
    stripe_requests_per_second: float = Field(
        80.0, gt=0, le=10_000, description="Calls to Stripe a second, for the whole installation (Stripe answers "
        "429 beyond 100 in live mode, 25 in test mode): calls wait their turn, the buyers' first."
    )
    payments_replicas: int = Field(
        1, ge=1, le=100, description="Replicas of the payments service: each takes its share of "
        "`stripe_requests_per_second`."
    )
    payment_server_rate_limit: float | None = Field(
        None, gt=0, description="The embedded payment server answers 429 above this many requests a second, as "
        "Stripe does (to rehearse its limit); unset: no limit."
    )
    stripe_checkout_wait_seconds: float = Field(
        1.0, ge=0, le=30, description="How long a checkout waits for its turn to create its payment intent; "
        "longer, the intent is queued and the buyer gets the order now, its client secret soon after."
    )
    stripe_publishable_key: str | None = Field(
        None,
        description="Stripe publishable key (pk_...): the storefront takes cards with Stripe.js; unset, it offers "
        "test payment methods. `cartwheel up` sets one for the embedded server.",
    )
    stripe_js_url: str = Field(
        "https://js.stripe.com/v3/", pattern=r"^https?://[^/?#]+/",
        description="Where the storefront loads Stripe.js from; `cartwheel up` points it at the embedded server's "
        "stand-in.",
    )
    reservation_ttl_seconds: int = Field(
        900, ge=1, le=7 * 86400, description="Stock held for an order awaiting payment, then released."
    )
    checkout_resume_seconds: float = Field(
        30, gt=0, description="An order left mid-checkout this long (a crash) is finished or cleaned up."
    )

    request_timeout: float = Field(5.0, gt=0, le=120, description="Seconds the gateway waits for a service to answer.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="`json` for log collectors.")
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$",
                          description="The shop's currency: a product created without one is priced in it (a "
                          "tenant's own: `cartwheel tenants set NAME currency=USD`).")
    locale: str = Field("en", description="How the pages and emails write money and numbers (CLDR, by Babel): `en` "
                        "gives €39.00, `de_DE` 39,00 € (a tenant's own: `cartwheel tenants set NAME locale=de_DE`).")
    tenant: str = Field("default", description="The installation's own tenant: its databases are the ones above "
                        "(other tenants: `cartwheel tenants`).")
    control_database_url: str | None = Field(
        None, description="The tenant registry. Default: sqlite:///<var_dir>/control.db"
    )
    tenant_database_url: str | None = Field(
        None,
        description="Where each other tenant's databases are: a URL with {service} and {tenant} in it, e.g. "
        "postgresql://shop@db/cartwheel_{service}__{tenant}. Default: sqlite:///<var_dir>/tenants/{tenant}/{service}.db",
    )
    tenant_databases_open: int = Field(
        128, ge=1, le=10_000,
        description="Tenant databases a process keeps open at most (the least recently used is closed first): "
        "more than the tenants busy at once (with 100 busy and 32 open, checkouts ran at a third of the rate).",
    )
    default_tenant_hosts: str = Field(
        "", description="Comma-separated hosts the installation's own tenant serves besides loopback (127.0.0.1, "
        "localhost, ::1) and the host of public_url; any other host no tenant names is 404. * serves every such "
        "host as the own shop (one shop behind a proxy that sends any host).",
    )
    otel_exporter: str = Field(
        "none", pattern=r"^(none|otlp|console|file:.+)$",
        description="Where trace spans go: `none` (spans off; log lines still carry an incoming trace id), `otlp` "
        "(OTLP over HTTP to the standard OTEL_EXPORTER_OTLP_ENDPOINT), `console`, or `file:<path>` (JSON lines).",
    )

    @field_validator("stripe_secret_key", "stripe_api_base", "stripe_webhook_secret", "stripe_publishable_key",
                     "public_url", "smtp_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``CARTWHEEL_STRIPE_SECRET_KEY=`` (as Compose passes an unset variable) means no key."""
        return None if value == "" else value

    @field_validator("tenant_database_url")
    @classmethod
    def _a_template(cls, value: str | None) -> str | None:
        """One tenant's database must never be another's: the template names both parts."""
        if value is not None and not ("{tenant}" in value and "{service}" in value):
            raise ValueError("the URL must have {tenant} and {service} in it, e.g. .../cartwheel_{service}__{tenant}")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _an_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"smtps?://[^/?#]+", value.get_secret_value()):
            raise ValueError("expected smtp://[user:password@]host[:port] or smtps://...")
        return value

    @field_validator("locale")
    @classmethod
    def _a_locale(cls, value: str) -> str:
        return known_locale(value)

    @field_validator("stripe_publishable_key")
    @classmethod
    def _publishable(cls, value: str | None) -> str | None:
        """The key the pages hand to every browser: a secret key there would give the account away."""
        if value is not None and not re.fullmatch(r"pk_(test|live)_\w+", value):
            raise ValueError("a Stripe publishable key starts with pk_test_ or pk_live_ (never a secret sk_ key)")
        return value

    def database_url(self, service: str, tenant: str | None = None) -> str:
        """``service``'s database for ``tenant`` (the installation's own tenant: ``<service>_database_url``)."""
        if service not in DATABASES:
            raise ValueError(f"unknown service {service!r}")
        if tenant is not None and tenant != self.tenant:
            template = self.tenant_database_url or f"sqlite:///{self.var_dir.resolve()}/tenants/{{tenant}}/{{service}}.db"
            return template.format(service=service, tenant=tenant)
        url = getattr(self, f"{service}_database_url")
        return url or f"sqlite:///{(self.var_dir / f'{service}.db').resolve()}"

    @property
    def control_url(self) -> str:
        """The tenant registry's database."""
        return self.control_database_url or f"sqlite:///{(self.var_dir / 'control.db').resolve()}"

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """TLS for the bus when a CA is configured (or the URL says ``tls://``); None: plain TCP."""
        if self.nats_tls_ca is None and not any(url.startswith("tls://") for url in self.nats_servers):
            return None
        context = ssl.create_default_context(cafile=str(self.nats_tls_ca) if self.nats_tls_ca else None)
        if self.nats_tls_cert is not None:
            context.load_cert_chain(str(self.nats_tls_cert), str(self.nats_tls_key) if self.nats_tls_key else None)
        return context

    def with_secrets(self) -> Settings:
        """Fill admin token and cookie secret from env, else from (or into) ``var/secrets.json``."""
        if self.admin_token and self.secret:
            return self
        stored = _load_or_create_secrets(self.var_dir / "secrets.json")
        return self.model_copy(
            update={
                "admin_token": self.admin_token or SecretStr(stored["admin_token"]),
                "secret": self.secret or SecretStr(stored["secret"]),
            }
        )


def _load_or_create_secrets(path: Path) -> dict[str, str]:
    if path.exists():
        return json.loads(path.read_text())
    private_dir(path.parent)
    values = {"admin_token": secrets.token_urlsafe(24), "secret": secrets.token_urlsafe(32)}
    # 0600 from the first byte, published whole and never over another's: processes starting at once agree.
    if not write_private(path, json.dumps(values).encode(), replace=False):
        values = json.loads(path.read_text())
    return values


@lru_cache
def get_settings() -> Settings:
    return Settings().with_secrets()
