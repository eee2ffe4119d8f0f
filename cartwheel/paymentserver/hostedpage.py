"""The hosted checkout page, ``/c/pay/{id}``: where a session's ``url`` takes the buyer (no key: the id is the key).

``GET`` shows the order and a card form (or the pending 3-D Secure challenge, or that the session
is closed); ``POST`` pays with the typed card; ``POST .../authenticate`` answers the challenge.
Paid: 303 to ``success_url`` with ``{CHECKOUT_SESSION_ID}`` filled in. Declined: the form again,
with Stripe's message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web

from cartwheel.paymentserver.pagehtml import challenge_page, closed_page, missing_page, pay_page
from cartwheel.paymentserver.pagepayment import PAGE_PAYMENT, Attempt
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.sessionparams import PAGE_PREFIX
from cartwheel.paymentserver.testcards import normalise_number

PAGE = PAGE_PREFIX + "{id}"
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}
_EXPIRY = re.compile(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*")


class CardRefused(ValueError):
    """What the page says of a card it cannot send (Stripe's page says it before sending, too)."""


def add_hosted_page(app: web.Application) -> None:
    app.router.add_get(PAGE, show_page)
    app.router.add_post(PAGE, pay)
    app.router.add_post(f"{PAGE}/authenticate", authenticate)


def card_params(form: Mapping[str, str], today: datetime | None = None) -> Params:
    """The typed card as PaymentMethod parameters; :class:`CardRefused` for one that is incomplete or past."""
    today = today or datetime.now(UTC)
    number = normalise_number(form.get("card_number", "").strip())
    if not number.isdigit() or not 12 <= len(number) <= 19 or not luhn(number):
        raise CardRefused("Your card number is invalid.")
    if not (expiry := _EXPIRY.fullmatch(form.get("expiry", ""))) or not 1 <= int(expiry[1]) <= 12:
        raise CardRefused("Your card's expiration date is incomplete.")
    month, year = int(expiry[1]), int(expiry[2]) + (2000 if len(expiry[2]) == 2 else 0)
    if (year, month) < (today.year, today.month):
        raise CardRefused("Your card's expiration date is in the past.")
    if not re.fullmatch(r"\d{3,4}", cvc := form.get("cvc", "").strip()):
        raise CardRefused("Your card's security code is incomplete.")
    return Params([("card[number]", number), ("card[exp_month]", str(month)), ("card[exp_year]", str(year)),
                   ("card[cvc]", cvc)])


def luhn(number: str) -> bool:
    digits = [int(digit) for digit in reversed(number)]
    return sum(digits[0::2] + [sum(divmod(2 * digit, 10)) for digit in digits[1::2]]) % 10 == 0


async def show_page(request: web.Request) -> web.StreamResponse:
    return render(await request.app[PAGE_PAYMENT].view(request.match_info["id"]))


async def pay(request: web.Request) -> web.StreamResponse:
    form, payment, session_id = await request.post(), request.app[PAGE_PAYMENT], request.match_info["id"]
    try:
        card = card_params({name: str(value) for name, value in form.items()})
    except CardRefused as refused:
        now = await payment.view(session_id)
        if now.outcome == "form":
            return render(Attempt("declined", now.session, str(refused)), status=400)
        return render(now, posted=True)
    return render(await payment.pay(session_id, card), posted=True)


async def authenticate(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    answer = await request.app[PAGE_PAYMENT].authenticate(request.match_info["id"], form.get("success") == "true")
    return render(answer, posted=True)


def render(attempt: Attempt, *, posted: bool = False, status: int | None = None) -> web.Response:
    """The page for ``attempt``: 402 for a decline, 409 for a payment a closed session refused."""
    session = attempt.session
    if session is None:
        return html(missing_page(), 404)
    if attempt.outcome == "paid":
        target = session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)
        return web.Response(status=303, headers={**HEADERS, "Location": target})
    if attempt.outcome == "closed":
        return html(closed_page(session), 409 if posted else 200)
    if attempt.outcome == "challenge":
        return html(challenge_page(session, attempt.message), 200)
    return html(pay_page(session, attempt.message), status or (402 if attempt.message else 200))


def html(page: str, status: int) -> web.Response:
    return web.Response(text=page, status=status, content_type="text/html", headers=HEADERS)
