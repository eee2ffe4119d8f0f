"""The API routes the stand-in answers itself (with localstripe's help): intents and payment methods.

A secret key may call them all; a browser's publishable key only creates a PaymentMethod, and
reads or confirms an intent with that intent's ``client_secret``.
"""

from __future__ import annotations

from aiohttp import web

from cartwheel.paymentserver.answers import caller, unauthorized
from cartwheel.paymentserver.params import Params
from cartwheel.paymentserver.standin import STANDIN


def add_routes(app: web.Application) -> None:
    intent, method = "/v1/payment_intents/{id}", "/v1/payment_methods/{id}"
    app.router.add_post("/v1/payment_intents", create_intent)
    app.router.add_get(intent, retrieve_intent)
    app.router.add_post(intent, update_intent)
    app.router.add_post(f"{intent}/confirm", confirm_intent)
    app.router.add_post(f"{intent}/_authenticate", authenticate_intent)
    app.router.add_post("/v1/payment_methods", create_method)
    app.router.add_get(method, retrieve_method)
    app.router.add_post(f"{method}/attach", attach_method)


async def body_params(request: web.Request) -> Params:
    try:
        return Params.from_body(await request.read(), request.content_type)
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": {"type": "invalid_request_error", "message": "Invalid body"}}',
                                 content_type="application/json") from None


def query_params(request: web.Request) -> Params:
    return Params(request.query.items())


async def create_intent(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    return await request.app[STANDIN].intents.create(params, request.headers.get("Idempotency-Key"))


async def retrieve_intent(request: web.Request) -> web.StreamResponse:
    query = query_params(request)
    who, secret = caller(request.headers, query.pop("key")), query.pop("client_secret")
    if not (who.secret or who.publishable):
        return unauthorized(who)
    client_secret = None if who.secret else secret or ""  # a browser sees an intent only with its secret
    return await request.app[STANDIN].intents.retrieve(request.match_info["id"], query, client_secret)


async def update_intent(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    return await request.app[STANDIN].intents.update(request.match_info["id"], params)


async def confirm_intent(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    who, secret = caller(request.headers, params.pop("key")), params.pop("client_secret")
    if not (who.secret or who.publishable):
        return unauthorized(who)
    client_secret = None if who.secret else secret or ""
    return await request.app[STANDIN].intents.confirm(request.match_info["id"], params, client_secret)


async def authenticate_intent(request: web.Request) -> web.StreamResponse:
    """3-D Secure, as localstripe's stripe.js asks it (a publishable key and the client secret; localstripe checks)."""
    body = await body_params(request)
    return await request.app[STANDIN].intents.authenticate(request.match_info["id"], query_params(request), body,
                                                           dict(request.headers))


async def create_method(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    if not ((who := caller(request.headers, params.get("key"))).secret or who.publishable):
        return unauthorized(who)
    methods = request.app[STANDIN].methods
    return methods.show(await methods.create(params))


async def retrieve_method(request: web.Request) -> web.StreamResponse:
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    methods, query = request.app[STANDIN].methods, query_params(request)
    answer = await methods.using(request.match_info["id"], lambda made: methods.upstream.call(
        "GET", f"/v1/payment_methods/{made}", query))
    return methods.show(answer)


async def attach_method(request: web.Request) -> web.StreamResponse:
    params = await body_params(request)
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    return await request.app[STANDIN].methods.attach(request.match_info["id"], params)
