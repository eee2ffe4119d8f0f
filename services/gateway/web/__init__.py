"""The storefront (``/``) and the admin (``/admin``): HTML pages served next to the JSON API.

The pages are their own small Flask app, a same-process client of the API: the gateway sends the
page paths here and everything else to the API, so ``/openapi.json`` stays the API's alone.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, render_template
from PIL import Image, ImageDraw
from werkzeug.exceptions import HTTPException

from cartwheel.contracts.orders import order_number
from cartwheel.errors import ServiceUnavailable
from cartwheel.money import money
from services.gateway.context import EXTENSION, gateway, tenant_settings
from services.gateway.web import admin, admin_orders, shop, stripejs
from services.gateway.web.internal import API_WSGI, PageError

PAGE_PREFIXES = ("/products/", "/cart", "/signin", "/orders", "/admin", "/static/", "/favicon.ico", "/unsubscribe")
MAX_UPLOAD = 6 * 1024 * 1024  # an image of up to 5 MB in a multipart form; the API says 413 above its own limit
FORM_AROUND = 1024 * 1024  # a digital product's file in a multipart form: the form's own bytes beside the file

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def mount(api: Flask) -> Flask:
    """Serve the pages from ``api``'s WSGI entry: page paths go to the pages app, the rest to the API."""
    pages = Flask(__name__, template_folder="../templates", static_folder="../static", static_url_path="/static")
    settings = api.extensions[EXTENSION].settings
    pages.config["MAX_CONTENT_LENGTH"] = max(MAX_UPLOAD, settings.digital_file_max_bytes + FORM_AROUND)
    pages.extensions[EXTENSION] = api.extensions[EXTENSION]
    pages.extensions[API_WSGI] = api.wsgi_app
    api.extensions["cartwheel.metrics"].install(pages)
    pages.jinja_env.filters["money"] = lambda amount, currency: money(amount, currency, page_locale())
    pages.jinja_env.filters["order_number"] = order_number
    pages.jinja_env.globals["page_locale"] = page_locale
    pages.jinja_env.add_extension("jinja2.ext.i18n")  # ngettext: "1 item", "2 items" (catalogs can come later)
    pages.jinja_env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    pages.jinja_env.autoescape = True
    pages.add_url_rule("/favicon.ico", "favicon", favicon)
    for blueprint in (shop.pages, admin.pages, admin_orders.pages):
        pages.register_blueprint(blueprint)
    pages.register_error_handler(PageError, _error_page)
    pages.register_error_handler(HTTPException, _http_error_page)
    pages.register_error_handler(ServiceUnavailable, _unavailable_page)
    pages.after_request(_page_headers)
    api.wsgi_app = _dispatch(pages.wsgi_app, api.wsgi_app)  # type: ignore[method-assign]
    return pages


def page_locale() -> str:
    """The locale the page being rendered writes money in: its shop's (a tenant's ``locale`` setting), else the
    installation's (``CARTWHEEL_LOCALE``)."""
    if "locale" not in g:
        g.locale = str(tenant_settings().get("locale") or gateway().settings.locale)
    return str(g.locale)


def favicon() -> Response:
    """The shop's icon (a wheel), drawn once: browsers ask every site for /favicon.ico."""
    return Response(_icon(), mimetype="image/vnd.microsoft.icon", headers={"Cache-Control": "public, max-age=86400"})


@functools.cache
def _icon() -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    ink = (196, 72, 28, 255)
    draw.ellipse((4, 4, 60, 60), outline=ink, width=6)
    for x0, y0, x1, y1 in ((32, 8, 32, 56), (8, 32, 56, 32), (15, 15, 49, 49), (15, 49, 49, 15)):
        draw.line((x0, y0, x1, y1), fill=ink, width=4)
    draw.ellipse((25, 25, 39, 39), fill=ink)
    out = io.BytesIO()
    image.save(out, format="ICO", sizes=[(16, 16), (32, 32), (48, 48)])
    return out.getvalue()


def is_page(path: str) -> bool:
    return path == "/" or path.startswith(PAGE_PREFIXES)


def _dispatch(pages: WSGIApp, api: WSGIApp) -> WSGIApp:
    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = pages if is_page(environ.get("PATH_INFO", "")) else api
        return target(environ, start_response)

    return route


def _error_page(error: PageError) -> tuple[str, int]:
    return render_template("error.html", error=error), error.status


def _unavailable_page(error: ServiceUnavailable) -> tuple[str, int, dict[str, str]]:
    page = PageError(503, "Part of the shop is not answering right now; try again in a moment.")
    return render_template("error.html", error=page), 503, {"Retry-After": "5"}


def _http_error_page(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    message = {404: "There is no page here.", 413: "That upload is too large (images: at most 5 MB)."}.get(status)
    return _error_page(PageError(status, message or error.description or "That did not work."))


def _page_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", stripejs.page_policy())
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response
