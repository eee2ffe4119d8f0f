"""Card entry with Stripe.js: which Stripe.js the order page loads, and what the page's policy lets it reach.

Stripe serves Stripe.js from https://js.stripe.com, answers it at https://api.stripe.com and shows
3-D Secure in frames from js.stripe.com and hooks.stripe.com. Any other Stripe.js (the embedded
payment server's stand-in) is served by the server that answers its API, so that one origin is all
it needs. Only the page that loads Stripe.js gets these sources; every other page keeps the
same-origin policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import g

from cartwheel.settings import Settings

STRIPE_JS_ORIGIN = "https://js.stripe.com"
STRIPE_SOURCES: Mapping[str, tuple[str, ...]] = {  # as Stripe's security guide lists them for Stripe.js
    "script-src": (STRIPE_JS_ORIGIN, "https://*.js.stripe.com"),
    "connect-src": ("https://api.stripe.com",),
    "frame-src": (STRIPE_JS_ORIGIN, "https://*.js.stripe.com", "https://hooks.stripe.com"),
}
SAME_ORIGIN: tuple[tuple[str, str], ...] = (
    ("default-src", "'self'"),
    ("img-src", "'self' data: http: https:"),
    ("style-src", "'self'"),
    ("script-src", "'self'"),
    ("frame-ancestors", "'none'"),
    ("form-action", "'self'"),
    ("base-uri", "'none'"),
)
"""No inline scripts, nothing from other origins: the pages work offline and resist injected markup."""


@dataclass(frozen=True)
class StripeJs:
    publishable_key: str
    url: str

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def sources(self) -> Mapping[str, tuple[str, ...]]:
        """The origins this Stripe.js loads from, calls and frames, by CSP directive."""
        if self.origin == STRIPE_JS_ORIGIN:
            return STRIPE_SOURCES
        return {directive: (self.origin,) for directive in STRIPE_SOURCES}


def configured(settings: Settings, own: Mapping[str, object] | None = None) -> StripeJs | None:
    """The Stripe.js to take cards with: with the tenant's own publishable key (``own``: its settings; a tenant
    paid into an account of its own must take cards for that account), else the installation's; None without
    one (the order page offers test methods)."""
    key = (own or {}).get("stripe_publishable_key") or settings.stripe_publishable_key
    return StripeJs(str(key), settings.stripe_js_url) if key else None


def content_security_policy(extra: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """The pages' policy, with ``extra`` origins added to their directives (after 'self')."""
    directives = dict(SAME_ORIGIN)
    for directive, origins in (extra or {}).items():
        directives[directive] = " ".join((directives.get(directive, "'self'"), *origins))
    return "; ".join(f"{directive} {value}" for directive, value in directives.items())


def loaded_on_this_page(stripe: StripeJs) -> None:
    """Note that the page being rendered loads ``stripe``, so its policy names its origins."""
    g.stripe_js = stripe


def page_policy() -> str:
    """The policy of the page being answered."""
    stripe: StripeJs | None = g.get("stripe_js")
    return content_security_policy(stripe.sources() if stripe else None)
