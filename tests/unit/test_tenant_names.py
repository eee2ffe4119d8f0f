"""What a tenant's name and hosts may be (they become folders, database names and subject tokens)."""

from __future__ import annotations

import pytest

from cartwheel.settings import Settings
from cartwheel.tenants.names import BadName, check_host, check_name, normal_host
from cartwheel.tenants.registry import check_settings


@pytest.mark.parametrize("name", ["acme", "acme-shop", "t0500", "a1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "Acme", "acme_shop", "-acme", "acme-", "1acme", "a" * 41, "../etc",
                                  "acme.shop", "acme shop"])
def test_names_that_could_escape_a_folder_or_a_database_name_are_refused(name: str) -> None:
    with pytest.raises(BadName, match="lower-case letters"):
        check_name(name)


@pytest.mark.parametrize(("given", "looked_up"), [("Shop.Example.COM", "shop.example.com"),
                                                  ("shop.example.com:8443", "shop.example.com"),
                                                  ("shop.example.com.", "shop.example.com"),
                                                  ("[::1]:8080", "[::1]"), ("127.0.0.1:8080", "127.0.0.1")])
def test_a_requests_host_is_looked_up_without_port_or_case(given: str, looked_up: str) -> None:
    assert normal_host(given) == looked_up


@pytest.mark.parametrize("host", ["https://shop.example.com", "shop.example.com/x", "shop_x.example.com", "",
                                  "-shop.example.com"])
def test_a_host_is_a_dns_name(host: str) -> None:
    with pytest.raises(BadName, match="DNS name"):
        check_host(host)


def test_settings_a_tenant_may_set() -> None:
    assert check_settings({"currency": "usd"}) == {"currency": "USD"}
    with pytest.raises(BadName, match="unknown tenant setting stripe_secret_key"):
        check_settings({"stripe_secret_key": "sk_live_x"})
    with pytest.raises(BadName, match="ISO 4217"):
        check_settings({"currency": "euro"})


def test_each_tenant_has_its_own_databases_and_the_installations_own_keeps_its_urls(tmp_path: object) -> None:
    settings = Settings(var_dir="/srv/shop", orders_database_url="postgresql://db/orders")
    assert settings.database_url("orders") == "postgresql://db/orders"
    assert settings.database_url("orders", "default") == "postgresql://db/orders"
    assert settings.database_url("orders", "acme") == "sqlite:////srv/shop/tenants/acme/orders.db"
    templated = Settings(tenant_database_url="postgresql://db/cw_{service}__{tenant}")
    assert templated.database_url("cart", "acme") == "postgresql://db/cw_cart__acme"


def test_a_template_that_would_share_a_database_between_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\{tenant\} and \{service\}"):
        Settings(tenant_database_url="postgresql://db/cw_{service}")
