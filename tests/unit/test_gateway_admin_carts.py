"""Admin cart list over a fake bus."""

from __future__ import annotations

from cartwheel.contracts.cart import ListCarts
from cartwheel.settings import Settings
from services.gateway.app import create_app
from services.gateway.testing import FakeBus

TOKEN = "admin-token-for-tests-0123456789"


def client_and_bus() -> tuple[object, FakeBus]:
    bus = FakeBus({ListCarts: lambda m: {"items": [], "next_cursor": None}})
    app = create_app(Settings(admin_token=TOKEN, secret="s" * 32), bus)
    return app.test_client(), bus


def test_admins_list_carts_by_status() -> None:
    client, bus = client_and_bus()
    resp = client.get("/api/admin/carts?status=abandoned&limit=10", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.get_json() == {"items": [], "next_cursor": None}
    (sent,) = bus.sent
    assert isinstance(sent, ListCarts) and (sent.status, sent.limit, sent.after) == ("abandoned", 10, None)


def test_the_cart_list_is_for_admins_and_checks_its_query() -> None:
    client, bus = client_and_bus()
    assert client.get("/api/admin/carts").status_code == 401
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/admin/carts?status=lost", headers=admin).status_code == 422
    assert client.get("/api/admin/carts?limit=0", headers=admin).status_code == 422
    assert client.get("/api/admin/carts?cursor=a.b", headers=admin).status_code == 422
    assert bus.sent == []
