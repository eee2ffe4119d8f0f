"""How ``cartwheel up`` shows its children's output, and what it hands them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import SecretStr

from cartwheel.settings import SERVICES, Settings
from cartwheel.supervisor import NAMES, Console, child_env, describe_exit, use_colour


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_prefix_is_fixed_width_for_every_name() -> None:
    console = Console(io.StringIO(), NAMES)
    prefixes = [console.prefix(name, "x") for name in NAMES]
    assert console.prefix("catalog", "listening") == "catalog       | listening"  # as wide as notifications
    assert len({p.index("|") for p in prefixes}) == 1


def test_lines_go_out_prefixed_without_colour() -> None:
    out = io.StringIO()
    console = Console(out, NAMES, colour=False)
    console.child_line("cart", "hello")
    console.say("starting nats-server…")
    assert out.getvalue() == "cart          | hello\ncartwheel: starting nats-server…\n"
    assert "\033[" not in out.getvalue()


def test_colour_differs_per_child_and_resets() -> None:
    console = Console(io.StringIO(), NAMES, colour=True)
    catalog, cart = console.prefix("catalog", "a"), console.prefix("cart", "a")
    assert catalog.startswith("\033[") and "\033[0m" in catalog
    assert catalog.split("m", 1)[0] != cart.split("m", 1)[0]


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert use_colour(FakeTerminal(), {}) is True
    assert use_colour(io.StringIO(), {}) is False
    assert use_colour(FakeTerminal(), {"NO_COLOR": "1"}) is False


def test_a_closed_output_does_not_raise() -> None:
    out = io.StringIO()
    out.close()
    Console(out, NAMES).child_line("orders", "still fine")


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "code 3"
    assert describe_exit(-9) == "signal SIGKILL"


def test_children_read_back_exactly_the_supervisors_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        var_dir=tmp_path, nats_url="nats://127.0.0.1:4333", gateway_port=8181, embedded_nats=True
    ).model_copy(update={"admin_token": SecretStr("admin-t"), "secret": SecretStr("cookie-s"),
                         "stripe_secret_key": SecretStr("sk_test_x"), "stripe_webhook_secret": SecretStr("whsec_x")})
    env = child_env(settings, metrics_port=9102, role="payments")
    assert env["CARTWHEEL_METRICS_PORT"] == "9102"
    assert env["CARTWHEEL_ADMIN_TOKEN"] == "admin-t"
    for key, value in env.items():
        if key.startswith("CARTWHEEL_"):
            monkeypatch.setenv(key, value)
    child = Settings()
    expected = settings.model_copy(
        update={f"{s}_database_url": settings.database_url(s) for s in SERVICES} | {"metrics_port": 9102}
    )
    assert child.model_dump(mode="json") == expected.model_dump(mode="json")
    assert child.secret is not None and child.secret.get_secret_value() == "cookie-s"
    assert child.stripe_secret_key is not None and child.stripe_secret_key.get_secret_value() == "sk_test_x"


def test_only_payments_is_given_the_stripe_key_and_webhook_secret(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTWHEEL_STRIPE_SECRET_KEY", "sk_test_inherited")  # exported in the operator's shell
    settings = Settings(var_dir=tmp_path).model_copy(
        update={"stripe_secret_key": SecretStr("sk_test_x"), "stripe_webhook_secret": SecretStr("whsec_x")})
    for role in ("gateway", "catalog", "cart", "inventory", "orders"):
        env = child_env(settings, metrics_port=0, role=role)
        # Before, every process had both: the internet-facing gateway could charge and refund cards.
        assert "CARTWHEEL_STRIPE_SECRET_KEY" not in env and "CARTWHEEL_STRIPE_WEBHOOK_SECRET" not in env, role
    env = child_env(settings, metrics_port=0, role="payments")
    assert (env["CARTWHEEL_STRIPE_SECRET_KEY"], env["CARTWHEEL_STRIPE_WEBHOOK_SECRET"]) == ("sk_test_x", "whsec_x")


def test_the_embedded_payment_server_gives_the_storefront_a_publishable_key_and_its_stripe_js(
    tmp_path: Path,
) -> None:
    from cartwheel.supervisor import EMBEDDED_PUBLISHABLE_KEY, System

    shop = System(Settings(var_dir=tmp_path), out=io.StringIO(), seed=False)
    assert shop.settings.stripe_publishable_key == EMBEDDED_PUBLISHABLE_KEY
    assert shop.settings.stripe_js_url == f"{shop.settings.stripe_api_base}/js.stripe.com/v3/"  # the stand-in's
    env = child_env(shop.settings, metrics_port=0, role="gateway")  # not a secret: the gateway hands it to browsers
    assert env["CARTWHEEL_STRIPE_PUBLISHABLE_KEY"] == EMBEDDED_PUBLISHABLE_KEY
    assert env["CARTWHEEL_STRIPE_JS_URL"] == shop.settings.stripe_js_url
    real = Settings(var_dir=tmp_path, stripe_secret_key="sk_test_real", stripe_publishable_key="pk_test_real")
    kept = System(real, out=io.StringIO(), seed=False).settings
    assert (kept.stripe_publishable_key, kept.stripe_js_url) == ("pk_test_real", "https://js.stripe.com/v3/")


def test_scale_reads_service_counts_and_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    from cartwheel.supervisor import StartupError, System, parse_scale

    with pytest.raises(StartupError, match="gateway=2"):  # the same check, given a mapping
        System(Settings(var_dir=tmp_path), out=io.StringIO(), scale={"gateway": 2}, seed=False)

    assert parse_scale("inventory=3, cart=2") == {"inventory": 3, "cart": 2}
    assert parse_scale("") == {}
    for wrong in ("inventory", "inventory=0", "gateway=2", "inventory=x", "shipping=2"):
        with pytest.raises(ValueError, match="SERVICE=N"):
            parse_scale(wrong)


def test_a_cluster_shop_names_its_nodes_and_replicas_and_puts_each_database_on_postgres(tmp_path: Path) -> None:
    from cartwheel.settings import DATABASES, Settings
    from cartwheel.supervisor import System, restart_delay

    shop = System(Settings(var_dir=tmp_path, nats_url="nats://127.0.0.1:14222"), out=io.StringIO(), cluster=True,
                  scale={"inventory": 3}, postgres="postgresql://shop:pw@db.example:5433/postgres", seed=False)
    assert list(shop.nats_nodes) == ["nats-server-1", "nats-server-2", "nats-server-3"]
    assert shop.settings.nats_servers == [f"nats://127.0.0.1:{port}" for port in (14222, 14223, 14224)]
    assert shop.settings.stream_replicas == 3
    assert shop.service_children.count("inventory-3") == 1 and "inventory" not in shop.service_children
    assert {shop.settings.database_url(name) for name in DATABASES} == {
        f"postgresql+psycopg://shop:pw@db.example:5433/cartwheel_{name}" for name in DATABASES}
    routes = {node.cluster.route_ports for node in shop.nats_nodes.values() if node.cluster}
    assert len(routes) == 1 and len(next(iter(routes))) == 3  # every node routes to the same three
    assert [restart_delay(n) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]
