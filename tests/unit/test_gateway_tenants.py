"""Many shops on one gateway: a request's tenant comes from its Host, and nothing of one tenant (messages, cache
keys, images, accounts, sessions, cookies, admin tokens) is reached from another's host."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cartwheel import subjects
from cartwheel.contracts.base import Message
from cartwheel.contracts.cart import AddToCart, GetCart
from cartwheel.contracts.catalog import CreateProduct, GetProduct, ListProducts, SetProductImage
from cartwheel.contracts.inventory import GetStock, GetStocks
from cartwheel.settings import Settings
from cartwheel.tenants.mirror import Entry
from cartwheel.tenants.registry import token_hash
from services.gateway import tenancy
from services.gateway.app import create_app
from services.gateway.cookies import CART_COOKIE
from services.gateway.session import SESSION_COOKIE
from services.gateway.tenancy import StaticHosts, request_host
from services.gateway.testing import FakeBus
from tests.unit.test_gateway_cart import SECRET, Carts, signed
from tests.unit.test_gateway_images import PNG
from tests.unit.test_gateway_products import Catalog, Inventory, make_product

OWN_TOKEN = "installation-admin-token"
ACME_TOKEN = "acme-admin-token"
OWN_HOST, ACME_HOST, BETA_HOST, OFF_HOST = "shop.test", "acme.test", "beta.test", "closed.test"
PASSWORD = "correct horse battery"
ENTRIES = [
    Entry("acme", True, (ACME_HOST,), {}, token_hash(ACME_TOKEN)),
    Entry("beta", True, (BETA_HOST,), {}, token_hash("beta-admin-token")),
    Entry("closed", False, (OFF_HOST,), {}, token_hash("closed-admin-token")),
]


class TenantCatalog(Catalog):
    """The catalog, one dict of products per tenant."""

    def __init__(self) -> None:
        super().__init__()
        self.of: dict[str, dict[str, Any]] = {}

    def get(self, message: GetProduct) -> dict[str, Any]:
        self.products = self.of.setdefault(message.tenant, {})
        return super().get(message)

    def list(self, message: ListProducts) -> dict[str, Any]:
        self.products = self.of.setdefault(message.tenant, {})
        return super().list(message)

    def create(self, message: CreateProduct) -> dict[str, Any]:
        product = make_product(sku=message.draft.sku, name=message.draft.name)
        self.of.setdefault(message.tenant, {})[product.id] = product
        return product.model_dump(mode="json")

    def set_image(self, message: SetProductImage) -> dict[str, Any]:
        products = self.of[message.tenant]
        product = products[message.product_id].model_copy(
            update={"image_etag": message.etag, "image_type": message.content_type})
        products[product.id] = product
        return product.model_dump(mode="json")


@pytest.fixture
def catalog() -> TenantCatalog:
    return TenantCatalog()


@pytest.fixture
def bus(catalog: TenantCatalog) -> FakeBus:
    carts, inventory = Carts(), Inventory()
    return FakeBus({GetProduct: catalog.get, ListProducts: catalog.list, CreateProduct: catalog.create,
                    SetProductImage: catalog.set_image, GetStock: inventory.get, GetStocks: inventory.get_many,
                    GetCart: carts.get, AddToCart: carts.add})


@pytest.fixture
def settings(tmp_path: Path, gateway_database_url: str, migrated_gateway_db: Path) -> Settings:
    for name in ("acme", "beta"):  # as `cartwheel tenants create` leaves them: a migrated gateway database each
        folder = tmp_path / "var" / "tenants" / name
        folder.mkdir(parents=True)
        (folder / "gateway.db").write_bytes(migrated_gateway_db.read_bytes())
    return Settings(admin_token=OWN_TOKEN, secret=SECRET, gateway_database_url=gateway_database_url,
                    var_dir=tmp_path / "var", default_tenant_hosts=OWN_HOST)


def app_client(settings: Settings, bus: FakeBus, hosts: Any = None, **changes: Any) -> FlaskClient:
    settings = settings.model_copy(update=changes)
    return create_app(settings, bus, hosts or StaticHosts(settings, ENTRIES)).test_client()


@pytest.fixture
def client(settings: Settings, bus: FakeBus) -> FlaskClient:
    return app_client(settings, bus)


def at(host: str, **headers: str) -> dict[str, Any]:
    return {"headers": {"Host": host, **headers}}


def sent(bus: FakeBus, kind: type[Message]) -> list[Any]:
    return [message for message in bus.sent if isinstance(message, kind)]


# -- which tenant ------------------------------------------------------------------------------------------------


def test_each_message_carries_the_tenant_its_host_names(client: FlaskClient, bus: FakeBus) -> None:
    for host in (ACME_HOST, "ACME.test:8080", OWN_HOST, BETA_HOST + "."):
        assert client.get("/api/products", **at(host)).status_code == 200
    assert [m.tenant for m in sent(bus, ListProducts)] == ["acme", "acme", "default", "beta"]


def test_a_host_no_tenant_serves_is_a_404_unknown_host_and_reaches_no_service(
    client: FlaskClient, bus: FakeBus
) -> None:
    for host in ("unknown.test", OFF_HOST):  # never registered; a disabled tenant's
        answer = client.get("/api/products", **at(host))
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "unknown_host"
        page = client.get("/", **at(host))
        assert page.status_code == 404 and page.mimetype == "text/html" and b"no shop" in page.data
        assert client.post("/api/auth/login", json={"email": "a@b.example", "password": PASSWORD},
                           **at(host)).status_code == 404
    assert bus.sent == []


def test_the_ops_endpoints_answer_whatever_the_host(client: FlaskClient) -> None:
    assert client.get("/healthz", **at("unknown.test")).status_code == 200
    assert client.get("/readyz", **at("unknown.test")).status_code in (200, 503)
    assert client.get("/metrics", **at("unknown.test", Authorization=f"Bearer {OWN_TOKEN}")).status_code == 200


def test_forwarded_host_counts_only_behind_a_trusted_proxy(settings: Settings, bus: FakeBus) -> None:
    direct = app_client(settings, bus)
    assert direct.get("/api/products", **at(OWN_HOST, **{"X-Forwarded-Host": ACME_HOST})).status_code == 200
    proxied = app_client(settings, bus, trusted_proxies=1)
    assert proxied.get("/api/products", **at("10.0.0.5:8080", **{"X-Forwarded-Host": ACME_HOST})).status_code == 200
    forged = {"X-Forwarded-Host": f"{ACME_HOST}, unknown.test"}  # the client's own value comes first
    assert proxied.get("/api/products", **at(OWN_HOST, **forged)).status_code == 404
    assert [m.tenant for m in sent(bus, ListProducts)] == ["default", "acme"]


def test_the_request_host_is_the_last_forwarded_host_behind_proxies() -> None:
    environ = {"HTTP_HOST": "inner:8080", "HTTP_X_FORWARDED_HOST": "forged.test, shop.test"}
    assert request_host(environ, 0) == "inner:8080"
    assert request_host(environ, 1) == "shop.test"
    assert request_host({"HTTP_HOST": "inner"}, 2) == "inner"


class Unloaded(StaticHosts):
    """A worker whose copy of the tenant directory has not arrived yet."""

    @property
    def loaded(self) -> bool:
        return False


def test_before_the_directory_arrives_other_hosts_wait_then_503_and_the_own_host_is_served(
    settings: Settings, bus: FakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenancy, "SYNC_WAIT", 0.05)
    client = app_client(settings, bus, Unloaded(settings, ENTRIES))
    answer = client.get("/api/products", **at(ACME_HOST))
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.get_json()["error"]["code"] == "service_unavailable"  # never a 404 for a real tenant
    assert client.get("/api/products", **at(OWN_HOST)).status_code == 200
    assert [m.tenant for m in sent(bus, ListProducts)] == ["default"]


# -- what is each tenant's --------------------------------------------------------------------------------------


def test_each_host_takes_only_its_own_tenants_admin_token(client: FlaskClient, bus: FakeBus) -> None:
    draft = {"sku": f"sku-{uuid.uuid4().hex[:8]}", "name": "Mug", "price_cents": 900, "currency": "EUR"}

    def create(host: str, token: str) -> int:
        return client.post("/api/admin/products", json=draft, **at(host, Authorization=f"Bearer {token}")).status_code

    assert create(ACME_HOST, ACME_TOKEN) == 201
    assert create(ACME_HOST, OWN_TOKEN) == 401  # the installation's token administers its own tenant only
    assert create(BETA_HOST, ACME_TOKEN) == 401
    assert create(OWN_HOST, ACME_TOKEN) == 401
    assert create(OWN_HOST, OWN_TOKEN) == 201
    assert [m.tenant for m in sent(bus, CreateProduct)] == ["acme", "default"]


def test_a_shopper_registered_at_one_shop_is_unknown_at_another(client: FlaskClient) -> None:
    account = {"email": f"shopper-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
    assert client.post("/api/auth/register", json=account, **at(ACME_HOST)).status_code == 201
    assert client.post("/api/auth/login", json=account, **at(BETA_HOST)).status_code == 401
    assert client.post("/api/auth/login", json=account, **at(OWN_HOST)).status_code == 401
    assert client.post("/api/auth/register", json=account, **at(BETA_HOST)).status_code == 201  # a new account
    assert client.post("/api/auth/login", json=account, **at(ACME_HOST)).status_code == 200


def test_a_session_cookie_of_one_shop_signs_in_no_one_at_another(settings: Settings, bus: FakeBus) -> None:
    account = {"email": f"shopper-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
    acme = app_client(settings, bus)
    acme.post("/api/auth/register", json=account, **at(ACME_HOST))
    acme.post("/api/auth/register", json=account, **at(BETA_HOST))  # the same email at beta, to tempt a mix-up
    assert acme.post("/api/auth/login", json=account, **at(ACME_HOST)).status_code == 200
    cookie = acme.get_cookie(SESSION_COOKIE, domain=ACME_HOST)
    assert cookie is not None and acme.get("/api/auth/me", **at(ACME_HOST)).status_code == 200
    beta = app_client(settings, bus)
    for host in (BETA_HOST, OWN_HOST):  # a copy of the cookie, replayed at another shop
        beta.set_cookie(SESSION_COOKIE, cookie.value, domain=host)
        assert beta.get("/api/auth/me", **at(host)).status_code == 401


def test_a_cart_cookie_of_one_shop_names_no_cart_at_another(client: FlaskClient, bus: FakeBus) -> None:
    cart_id = uuid.uuid4().hex
    for host in (OWN_HOST, ACME_HOST):  # signed for the installation's own shop, and replayed at acme
        client.set_cookie(CART_COOKIE, signed(cart_id), domain=host)
    client.get("/api/cart", **at(OWN_HOST))
    client.get("/api/cart", **at(ACME_HOST))
    assert [(m.tenant, m.cart_id) for m in sent(bus, GetCart)] == [("default", cart_id)]


def test_cache_keys_are_the_tenants_and_another_tenants_entry_is_never_served(
    client: FlaskClient, bus: FakeBus
) -> None:
    theirs = make_product()
    bus.kv[(subjects.CATALOG_CACHE_BUCKET, subjects.catalog_cache_key("default", theirs.id))] = \
        theirs.model_dump_json().encode()
    bus.kv[(subjects.INVENTORY_STOCK_BUCKET, subjects.inventory_stock_key("default", theirs.id))] = \
        b'{"product_id": "x", "on_hand": 5, "reserved": 0, "available": 5, "version": 1}'
    assert client.get(f"/api/products/{theirs.id}", **at(ACME_HOST)).status_code == 404
    assert client.get(f"/api/products/{theirs.sku}", **at(ACME_HOST)).status_code == 404
    assert {key for _, key in bus.kv_reads} == {subjects.catalog_cache_key("acme", theirs.id),
                                                subjects.catalog_sku_key("acme", theirs.sku)}
    assert [m.tenant for m in sent(bus, GetProduct)] == ["acme", "acme"]
    assert client.get(f"/api/products/{theirs.id}", **at(OWN_HOST)).get_json()["available"] == 5


def test_an_image_is_stored_under_its_tenant_and_read_only_there(
    client: FlaskClient, bus: FakeBus, catalog: TenantCatalog
) -> None:
    admin = {"Authorization": f"Bearer {ACME_TOKEN}"}
    draft = {"sku": f"sku-{uuid.uuid4().hex[:8]}", "name": "Mug", "price_cents": 900, "currency": "EUR"}
    product = client.post("/api/admin/products", json=draft, **at(ACME_HOST, **admin)).get_json()
    answer = client.put(f"/api/admin/products/{product['id']}/image", data=PNG, content_type="image/png",
                        **at(ACME_HOST, **admin))
    assert answer.status_code == 200
    etag = hashlib.sha256(PNG).hexdigest()
    assert list(bus.objects) == [(subjects.PRODUCT_IMAGES_BUCKET, f"acme/{product['id']}/{etag}")]
    assert client.get(f"/api/products/{product['id']}/image", **at(ACME_HOST)).data == PNG
    catalog.of["beta"] = catalog.of["acme"]  # even a catalog that answered beta with acme's product
    assert client.get(f"/api/products/{product['id']}/image", **at(BETA_HOST)).status_code == 404


def test_openapi_names_the_unknown_host_404_on_every_route_but_the_ops_ones(client: FlaskClient) -> None:
    paths = client.get("/openapi.json", **at(ACME_HOST)).get_json()["paths"]
    assert "unknown_host" in paths["/api/products"]["get"]["responses"]["404"]["description"]
    assert "unknown_host" in paths["/api/cart"]["get"]["responses"]["404"]["description"]
    assert "404" not in paths["/healthz"]["get"]["responses"]


def test_an_image_stored_before_tenants_is_still_served_for_the_own_tenant_only(
    client: FlaskClient, bus: FakeBus, catalog: TenantCatalog
) -> None:
    etag = hashlib.sha256(PNG).hexdigest()
    product = make_product(image_etag=etag, image_type="image/png")
    catalog.of["default"] = catalog.of["acme"] = {product.id: product}
    bus.objects[(subjects.PRODUCT_IMAGES_BUCKET, f"{product.id}/{etag}")] = PNG  # the name before tenants
    assert client.get(f"/api/products/{product.id}/image", **at(OWN_HOST)).data == PNG
    assert client.get(f"/api/products/{product.id}/image", **at(ACME_HOST)).status_code == 404


def test_by_default_the_own_shop_answers_loopback_and_its_public_address_and_any_other_host_is_404() -> None:
    """The issue: unknown hosts are refused with 404. Without a list the own shop answered every host, a deleted
    tenant's hosts too (its shoppers landed in the installation's shop)."""
    from cartwheel.settings import Settings
    from services.gateway.tenancy import StaticHosts

    hosts = StaticHosts(Settings(public_url="https://shop.example.com/"))
    for mine in ("127.0.0.1:8080", "localhost", "[::1]:8080", "SHOP.example.com"):
        assert hosts.tenant_of(mine) == "default", mine
    for stranger in ("evil.example", "deleted-tenant.example", "10.0.0.7:8080"):
        assert hosts.tenant_of(stranger) is None, stranger
    assert StaticHosts(Settings(default_tenant_hosts="*")).tenant_of("evil.example") == "default"
