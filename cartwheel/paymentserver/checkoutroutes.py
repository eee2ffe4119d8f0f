"""Checkout Sessions: Stripe's API for them (a secret key) and the hosted page that pays them (no key).

``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions/{id}``, ``POST .../{id}/expire``,
``GET .../{id}/line_items``; the page at ``/c/pay/{id}`` (:mod:`.hostedpage`). Sessions past
their ``expires_at`` are expired in the background.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cartwheel.paymentserver.answers import caller, json_answer, stripe_error, unauthorized
from cartwheel.paymentserver.checkout import CHECKOUT, Checkout, IdempotencyKeyReused
from cartwheel.paymentserver.hostedpage import add_hosted_page
from cartwheel.paymentserver.pagepayment import PAGE_PAYMENT, PagePayment
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.routes import body_params, query_params
from cartwheel.paymentserver.sessionparams import SessionRefused, Window
from cartwheel.paymentserver.sessions import present_lines, present_session
from cartwheel.paymentserver.standin import STANDIN

PATH = "/v1/checkout/sessions"
MIN_SESSION_SECONDS = 1800  # Stripe's least: 30 minutes


def add_checkout(app: web.Application, min_session_seconds: int = MIN_SESSION_SECONDS) -> None:
    """The session API, the hosted page and the expiry of sessions, on the stand-in's ``app``."""
    standin = app[STANDIN]
    app[CHECKOUT] = Checkout(standin, Window(least=min_session_seconds))
    app[PAGE_PAYMENT] = PagePayment(app[CHECKOUT], standin.methods)
    app.on_startup.append(start_expiring)
    app.router.add_post(PATH, create_session)
    app.router.add_get(f"{PATH}/{{id}}", retrieve_session)
    app.router.add_post(f"{PATH}/{{id}}/expire", expire_session)
    app.router.add_get(f"{PATH}/{{id}}/line_items", list_line_items)
    add_hosted_page(app)


async def start_expiring(app: web.Application) -> None:
    task = asyncio.get_running_loop().create_task(app[CHECKOUT].keep_expiring())
    app[STANDIN].tasks.insert(0, task)  # stopped before the state's last write


def no_such_session(session_id: str) -> web.Response:
    return stripe_error(404, f"No such checkout.session: '{session_id}'", code="resource_missing", param="id")


def expands_lines(params: Params) -> bool:
    """Whether ``expand`` (``expand[]=``, or ``expand[0]=`` as the SDKs send it) asks for ``line_items``."""
    return any(value == "line_items" for name, value in params.pairs if name == "expand" or name.startswith("expand["))


async def create_session(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    key = request.headers.get("Idempotency-Key")
    try:
        session, replayed = request.app[CHECKOUT].create(params, key, f"{request.scheme}://{request.host}")
    except SessionRefused as refused:
        return stripe_error(400, refused.message, param=refused.param)
    except IdempotencyKeyReused:
        return stripe_error(400, "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{key}' if you meant to execute a different "
                            "request.", kind="idempotency_error")
    return json_answer(present_session(session, with_lines=expands_lines(params)),
                       headers={"Idempotent-Replayed": "true"} if replayed else None)


async def retrieve_session(request: web.Request) -> web.StreamResponse:
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    if (session := request.app[CHECKOUT].find(request.match_info["id"])) is None:
        return no_such_session(request.match_info["id"])
    return json_answer(present_session(session, with_lines=expands_lines(query_params(request))))


async def expire_session(request: web.Request) -> web.StreamResponse:
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    checkout, session_id = request.app[CHECKOUT], request.match_info["id"]
    if (session := checkout.find(session_id)) is None:
        return no_such_session(session_id)
    if not await checkout.expire(session_id):
        return stripe_error(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
    return json_answer(present_session(session))


async def list_line_items(request: web.Request) -> web.StreamResponse:
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    if (session := request.app[CHECKOUT].find(request.match_info["id"])) is None:
        return no_such_session(request.match_info["id"])
    query = query_params(request)
    limit = query.get("limit") or "10"
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        return stripe_error(400, "This value must be between 1 and 100 (inclusive).", param="limit")
    return json_answer(present_lines(session, int(limit), query.get("starting_after")))
