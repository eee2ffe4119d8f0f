"""The token of a mail's unsubscribe link: the shop's address, signed with the installation's secret.

The notifications service puts it in every reminder; the gateway checks it when the link is used. It
never expires (a link in an old mail must still work) and holds the tenant, so one shop's link never
unsubscribes anyone from another's.
"""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "cartwheel.unsubscribe"


def token(secret: str, tenant: str, email: str) -> str:
    return URLSafeSerializer(secret, salt=SALT).dumps([tenant, email.lower()])


def address(secret: str, tenant: str, value: str) -> str | None:
    """The address ``value`` unsubscribes from ``tenant``'s reminders; None for a token that is not one of ours
    (altered, another shop's, or signed with an older secret)."""
    try:
        signed = URLSafeSerializer(secret, salt=SALT).loads(value)
    except BadSignature:
        return None
    if not (isinstance(signed, list) and len(signed) == 2 and signed[0] == tenant and isinstance(signed[1], str)):
        return None
    return signed[1]
