"""Admin pages for orders (by status, one order with its history and mails, cancel or refund, send a mail
again), abandoned carts, and the mails the embedded catcher caught."""

from __future__ import annotations

from typing import get_args

from flask import Blueprint, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from cartwheel.contracts.base import MAX_PAGE_CURSOR
from cartwheel.contracts.orders import OrderStatus
from services.gateway.web.admin_session import admin_only
from services.gateway.web.internal import call

pages = Blueprint("admin_orders", __name__, url_prefix="/admin")

STATUSES: tuple[str, ...] = get_args(OrderStatus)
ENDED = frozenset({"cancelled", "expired", "refunded", "disputed", "dispute_lost"})
"""No cancel button: nothing left to cancel, or (a dispute) nothing the shop may refund now."""


@pages.get("/orders")
@admin_only
def orders() -> str:
    status = request.args.get("status", "")
    status = status if status in STATUSES else ""
    query = {"status": status, "cursor": request.args.get("cursor", "")[:MAX_PAGE_CURSOR], "limit": 50}
    listing = call("GET", "/api/admin/orders", query=query, admin=True).or_raise()
    return render_template("admin/orders.html", listing=listing, status=status, statuses=STATUSES)


@pages.get("/orders/<order_id>")
@admin_only
def order(order_id: str) -> tuple[str, int]:
    return _order_page(order_id, refused=None, status=200)


def _order_page(order_id: str, *, refused: str | None, status: int) -> tuple[str, int]:
    found = call("GET", f"/api/orders/{order_id}", admin=True).or_raise()
    notice = request.args.get("notice")
    cancelling = notice == "cancelled"  # a refund settles a moment later: the page follows it
    mails = call("GET", f"/api/admin/orders/{order_id}/mails", admin=True)  # the order shows without them
    page = render_template("admin/order.html", order=found, ended=ENDED, refused=refused, cancelling=cancelling,
                           mails=mails.data["items"] if mails.ok else None, resent=notice == "resent")
    return page, status


@pages.post("/orders/<order_id>/cancel")
@admin_only
def cancel(order_id: str) -> BaseResponse | tuple[str, int]:
    restock = "true" if request.form.get("restock") else "false"  # a paid order's units: back on hand, or shipped
    answer = call("POST", f"/api/admin/orders/{order_id}/cancel", admin=True, query={"restock": restock})
    if answer.ok:
        return redirect(f"/admin/orders/{order_id}?notice=cancelled", code=303)
    return _order_page(order_id, refused=answer.message, status=answer.status)


@pages.post("/orders/<order_id>/mails/<mail_id>/resend")
@admin_only
def resend(order_id: str, mail_id: str) -> BaseResponse | tuple[str, int]:
    answer = call("POST", f"/api/admin/orders/{order_id}/mails/{mail_id}/resend", admin=True)
    if answer.ok:
        return redirect(f"/admin/orders/{order_id}?notice=resent", code=303)
    return _order_page(order_id, refused=answer.message, status=answer.status)


@pages.get("/mail")
@admin_only
def mail() -> str:
    query = {"to": request.args.get("to", "")[:320] or None, "limit": 50}
    listing = call("GET", "/api/admin/mail", query={k: v for k, v in query.items() if v}, admin=True).or_raise()
    return render_template("admin/mail.html", listing=listing, to=query["to"] or "")


@pages.get("/carts")
@admin_only
def carts() -> str:
    query = {"status": "abandoned", "cursor": request.args.get("cursor", "")[:MAX_PAGE_CURSOR], "limit": 50}
    listing = call("GET", "/api/admin/carts", query=query, admin=True).or_raise()
    return render_template("admin/carts.html", listing=listing)
