"""Admin pages: sign in with the admin token, products (list, search, create, edit, (de)activate, image)
and their stock. Each form posts here; the handler calls the JSON API with the admin token and shows
the API's validation errors next to the fields."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from cartwheel.contracts.base import MAX_PAGE_CURSOR
from services.gateway import ratelimit
from services.gateway.context import gateway
from services.gateway.errors import ApiError
from services.gateway.images import MAX_IMAGE_BYTES
from services.gateway.web import admin_session
from services.gateway.web.admin_session import admin_only
from services.gateway.web.forms import number, problems_of, product_fields
from services.gateway.web.internal import Answer, call

pages = Blueprint("admin", __name__, url_prefix="/admin")
NOTICES = {
    "created": "Product created.",
    "saved": "Changes saved.",
    "image": "Image uploaded.",
    "file": "File uploaded: the product is digital; buyers download it once paid.",
    "stock": "Stock updated.",
    "activated": "Product is on sale.",
    "deactivated": "Product is no longer on sale.",
    "cancelled": "Order cancelled; a paid order is refunded.",
}


@pages.app_context_processor
def _admin_context() -> dict[str, Any]:
    if not request.path.startswith(admin_session.ADMIN_PATH):
        return {}
    return {"csrf_token": admin_session.page_csrf_token(), "notice": NOTICES.get(request.args.get("notice", ""))}


@pages.get("")
def home() -> BaseResponse | str:
    if admin_session.csrf_token():
        return redirect("/admin/products", code=303)
    return render_template("admin/signin.html")


@pages.post("/login")
def login() -> BaseResponse | tuple[str, int, dict[str, str]] | tuple[str, int]:
    try:  # wrong tokens count against the address, like failed shopper sign-ins
        attempt = ratelimit.begin_admin_attempt(ratelimit.client_address())
    except ApiError as refused:
        wait = refused.headers
        message = f"Too many wrong tokens from here; try again in {wait.get('Retry-After', 'a few')} seconds."
        return render_template("admin/signin.html", error=message), 429, wait
    if not admin_session.token_is_right(request.form.get("token", "")):
        return render_template("admin/signin.html", error="That is not the admin token."), 401
    ratelimit.attempt_succeeded(attempt)
    return _redirect_setting("/admin/products", admin_session.session_cookie())


@pages.post("/logout")
@admin_only
def logout() -> BaseResponse:
    return _redirect_setting("/admin", admin_session.end_session())


@pages.get("/products")
@admin_only
def products() -> str:
    q, cursor = request.args.get("q", "").strip()[:200], request.args.get("cursor", "")[:MAX_PAGE_CURSOR]
    query = {"q": q, "cursor": cursor, "include_inactive": "true", "limit": 50}
    listing = call("GET", "/api/products", query=query, admin=True).or_raise()
    return render_template("admin/products.html", listing=listing, q=q)


@pages.route("/products/new", methods=["GET", "POST"])
@admin_only
def new_product() -> BaseResponse | tuple[str, int] | str:
    if request.method == "GET":
        return render_template("admin/product_form.html", values={"currency": "EUR", "active": True}, errors={})
    fields = product_fields(request.form, new=True)
    answer = call("POST", "/api/admin/products", json=fields, admin=True)
    if answer.ok:
        return redirect(f"/admin/products/{answer.data['id']}?notice=created", code=303)
    return render_template("admin/product_form.html", values=fields, errors=problems_of(answer)), answer.status


@pages.get("/products/<product_id>")
@admin_only
def product(product_id: str) -> str:
    return _product_page(product_id)[0]


@pages.post("/products/<product_id>")
@admin_only
def edit_product(product_id: str) -> BaseResponse | tuple[str, int]:
    fields = product_fields(request.form, new=False)
    answer = call("PATCH", f"/api/admin/products/{product_id}", json=fields, admin=True)
    return _done(answer, product_id, "saved") or _product_page(product_id, answer, "edit", fields)


@pages.post("/products/<product_id>/active")
@admin_only
def set_active(product_id: str) -> BaseResponse | tuple[str, int]:
    active = request.form.get("active") == "true"
    answer = call("PATCH", f"/api/admin/products/{product_id}", json={"active": active}, admin=True)
    return _done(answer, product_id, "activated" if active else "deactivated") or _product_page(product_id, answer)


@pages.post("/products/<product_id>/image")
@admin_only
def upload_image(product_id: str) -> BaseResponse | tuple[str, int]:
    upload = request.files.get("image")
    if upload is None or not upload.filename:
        return _product_page(product_id, Answer.refusal("image", "choose an image file"), "image")
    data = upload.read()
    if len(data) > MAX_IMAGE_BYTES:  # the pages take a digital product's file, much larger: an image is not one
        raise RequestEntityTooLarge()
    answer = call("PUT", f"/api/admin/products/{product_id}/image", body=data,
                  content_type=upload.mimetype or "application/octet-stream", admin=True)
    if answer.status == 405 or (answer.status == 404 and answer.message.startswith("no route")):
        answer = Answer.refusal("image", "this gateway cannot store images yet")
    return _done(answer, product_id, "image") or _product_page(product_id, answer, "image")


@pages.post("/products/<product_id>/file")
@admin_only
def upload_file(product_id: str) -> BaseResponse | tuple[str, int]:
    upload = request.files.get("file")  # at most digital_file_max_bytes and the form around it (web/__init__.py)
    if upload is None or not upload.filename:
        return _product_page(product_id, Answer.refusal("file", "choose a file"), "file")
    answer = call("PUT", f"/api/admin/products/{product_id}/file", body=upload.read(), query={"filename":
                  upload.filename}, content_type=upload.mimetype or "application/octet-stream", admin=True)
    return _done(answer, product_id, "file") or _product_page(product_id, answer, "file")


@pages.post("/products/<product_id>/stock")
@admin_only
def change_stock(product_id: str) -> BaseResponse | tuple[str, int]:
    if request.form.get("action") == "set":
        body, form = {"on_hand": number(request.form.get("on_hand"))}, "set_stock"
        answer = call("PUT", f"/api/admin/inventory/{product_id}", json=body, admin=True)
    else:
        body, form = {"quantity": number(request.form.get("quantity"))}, "restock"
        answer = call("POST", f"/api/admin/inventory/{product_id}/restock", json=body, admin=True)
    back = "/admin/inventory" if request.form.get("back") == "inventory" else None
    return _done(answer, product_id, "stock", back) or _product_page(product_id, answer, form, body)


@pages.get("/inventory")
@admin_only
def inventory() -> str:
    listing = call("GET", "/api/products", query={"include_inactive": "true", "limit": 100}, admin=True).or_raise()
    levels = {p["id"]: call("GET", f"/api/admin/inventory/{p['id']}", admin=True) for p in listing["items"]}
    stock = {product_id: level.data if level.ok else None for product_id, level in levels.items()}
    return render_template("admin/inventory.html", products=listing["items"], stock=stock)


def _redirect_setting(location: str, cookie: str) -> BaseResponse:
    response = redirect(location, code=303)
    response.headers.add("Set-Cookie", cookie)
    return response


def _done(answer: Answer, product_id: str, notice: str, back: str | None = None) -> BaseResponse | None:
    if not answer.ok:
        return None
    return redirect(f"{back or f'/admin/products/{product_id}'}?notice={notice}", code=303)


def _product_page(
    product_id: str, refused: Answer | None = None, form: str = "", values: Any = None
) -> tuple[str, int]:
    found = call("GET", f"/api/products/{product_id}", admin=True).or_raise()
    level = call("GET", f"/api/admin/inventory/{found['id']}", admin=True)
    errors = {form: problems_of(refused)} if refused else {}
    edit = values if form == "edit" and values else found
    page = render_template("admin/product.html", product=found, stock=level.data if level.ok else None,
                           errors=errors, edit=edit, values=values or {},
                           file_max=gateway().settings.digital_file_max_bytes)
    return page, refused.status if refused else 200
