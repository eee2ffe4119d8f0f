"""The stand-in's application: metering, its ``/_config/`` routes, the API routes it answers (Checkout Sessions and
their hosted page among them), the rest forwarded."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from cartwheel.paymentserver import state as saved
from cartwheel.paymentserver.answers import (
    caller,
    header_key,
    json_answer,
    rate_limited,
    relay,
    stripe_error,
    unauthorized,
    upstream_down,
)
from cartwheel.paymentserver.checkoutroutes import MIN_SESSION_SECONDS, add_checkout
from cartwheel.paymentserver.metering import path_kind
from cartwheel.paymentserver.routes import add_routes, body_params
from cartwheel.paymentserver.standin import STANDIN, Standin
from cartwheel.paymentserver.state import Registration
from cartwheel.paymentserver.upstream import Upstream, UpstreamDown

STRIPE_JS = Path(__file__).with_name("static") / "stripe-v3.js"


def make_app(upstream: str, state_path: Path | None = None, rate_limit: float | None = None,
             min_session_seconds: int = MIN_SESSION_SECONDS) -> web.Application:
    app = web.Application(middlewares=[meter])
    app[STANDIN] = Standin(saved.load(state_path), Upstream(upstream), state_path, rate_limit)
    app.on_startup.append(start_tasks)
    app.on_cleanup.append(stop_tasks)
    app.on_response_prepare.append(allow_browsers)
    app.router.add_post("/_config/webhooks/{id}", register_webhook)
    app.router.add_delete("/_config/data", clear_data)
    app.router.add_get("/_config/stats", stats)
    app.router.add_delete("/_config/stats", reset_stats)
    app.router.add_get("/js.stripe.com/v3/", stripe_js)
    add_routes(app)
    add_checkout(app, min_session_seconds)
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@web.middleware
async def meter(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count API requests; above ``--rate-limit`` (requests with a secret key) answer 429 as Stripe does."""
    standin = request.app[STANDIN]
    if request.path.startswith("/v1/"):
        kind = path_kind(request.method, request.path)
        wait = standin.limiter.admit() if standin.limiter and header_key(request.headers).startswith("sk_") else None
        standin.stats.count(kind, rate_limited=wait is not None)
        if wait is not None:
            return rate_limited(wait)
    try:
        return await handler(request)
    except UpstreamDown:
        return upstream_down()


async def start_tasks(app: web.Application) -> None:
    standin = app[STANDIN]
    loop = asyncio.get_running_loop()
    standin.tasks.append(loop.create_task(standin.webhooks.keep_registered()))
    if standin.state_path is not None:
        standin.tasks.append(loop.create_task(saved.keep_saved(standin.state, standin.state_path)))


async def stop_tasks(app: web.Application) -> None:
    standin = app[STANDIN]
    for task in standin.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # the state is written on the way out
    await standin.webhooks.close()
    await standin.upstream.close()


BROWSER_PATHS = ("/v1/", "/js.stripe.com/")
"""What a page's script may call from another origin: the API (with a publishable key) and Stripe.js; not
``/_config`` (a page could register a webhook) nor the checkout page."""


async def allow_browsers(request: web.Request, response: web.StreamResponse) -> None:
    """CORS for a page's script calling with a publishable key."""
    if (origin := request.headers.get("Origin")) and request.path.startswith(BROWSER_PATHS):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept, Authorization, Idempotency-Key"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS, DELETE"


async def register_webhook(request: web.Request) -> web.StreamResponse:
    """Where the events go, for whoever holds a secret key: a page the developer visits can post a form here (CORS
    does not stop that), but cannot add an Authorization header to it."""
    if not (who := caller(request.headers)).secret:
        return unauthorized(who)
    params = await body_params(request)
    url, secret = params.get("url") or "", params.get("secret") or ""
    events = [value for key, value in params.pairs if key in ("events[]", "events")]
    if not url.startswith("http") or not secret:
        return stripe_error(400, "Bad request: url (http...) and secret are required")
    status = await request.app[STANDIN].webhooks.register(request.match_info["id"], Registration(url, secret, events))
    return web.Response(status=status)


async def clear_data(request: web.Request) -> web.StreamResponse:
    standin = request.app[STANDIN]
    answer = await standin.upstream.send("DELETE", "/_config/data")
    if answer.ok:
        standin.state.clear_data()
    return relay(answer)


async def stats(request: web.Request) -> web.StreamResponse:
    standin = request.app[STANDIN]
    return json_answer(standin.stats.as_json(standin.rate_limit))


async def reset_stats(request: web.Request) -> web.StreamResponse:
    request.app[STANDIN].stats.reset()
    return await stats(request)


async def stripe_js(request: web.Request) -> web.StreamResponse:
    """Cartwheel's own Stripe.js stand-in (``static/stripe-v3.js``), in place of localstripe's."""
    return web.FileResponse(STRIPE_JS, headers={"Content-Type": "text/javascript; charset=utf-8",
                                                "Cache-Control": "no-cache"})


async def preflight(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def forward(request: web.Request) -> web.StreamResponse:
    """Anything else, to localstripe as it came; intents and methods in the answer shown with the notes."""
    standin = request.app[STANDIN]
    answer = await standin.upstream.send(request.method, request.rel_url.raw_path,
                                         query=request.rel_url.raw_query_string, body=await request.read(),
                                         headers=request.headers)
    if (answer.parsed or {}).get("object") == "payment_method":
        return standin.methods.show(answer)
    return standin.intents.show(answer)
