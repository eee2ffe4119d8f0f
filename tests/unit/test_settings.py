from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cartwheel.settings import Settings


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    first = Settings(var_dir=tmp_path).with_secrets()
    second = Settings(var_dir=tmp_path).with_secrets()
    assert first.admin_token and first.secret
    assert first.admin_token.get_secret_value() == second.admin_token.get_secret_value()  # type: ignore[union-attr]
    assert first.admin_token.get_secret_value() != first.secret.get_secret_value()
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


def test_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTWHEEL_ADMIN_TOKEN", "from-env-token")
    monkeypatch.setenv("CARTWHEEL_CATALOG_DATABASE_URL", "postgresql+psycopg://db/catalog")
    settings = Settings(var_dir=tmp_path).with_secrets()
    assert settings.admin_token.get_secret_value() == "from-env-token"  # type: ignore[union-attr]
    assert settings.database_url("catalog") == "postgresql+psycopg://db/catalog"
    assert settings.database_url("orders") == f"sqlite:///{(tmp_path / 'orders.db').resolve()}"


def test_unknown_service_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(var_dir=tmp_path).database_url("nope")
    with pytest.raises(ValueError):
        Settings(gateway_port=0)
    assert Settings(nats_url="nats://a:4222, nats://b:4222").nats_servers == ["nats://a:4222", "nats://b:4222"]


def test_cli_refuses_unknown_services_and_knows_local_health() -> None:
    from cartwheel.cli import parse

    assert parse(["health", "--local", "catalog"]).local is True
    assert parse(["migrate"]).services == []
    assert parse(["migrate", "gateway"]).services == ["gateway"]  # the gateway has a database (accounts)
    for argv in (["migrate", "bogus"], ["health", "bogus"], ["run", "bogus"]):
        with pytest.raises(SystemExit):
            parse(argv)


def test_a_publishable_key_must_be_one(tmp_path: Path) -> None:
    key = Settings(var_dir=tmp_path, stripe_publishable_key="pk_test_abc123").stripe_publishable_key
    assert key == "pk_test_abc123"
    assert Settings(var_dir=tmp_path, stripe_publishable_key="").stripe_publishable_key is None  # Compose's unset
    for wrong in ("sk_test_abc123", "rk_live_abc", "pk_abc", "pk_test_"):  # a secret key would reach every browser
        with pytest.raises(ValueError, match="publishable key starts with pk_"):
            Settings(var_dir=tmp_path, stripe_publishable_key=wrong)
    assert Settings(var_dir=tmp_path).stripe_js_url == "https://js.stripe.com/v3/"
    with pytest.raises(ValueError):
        Settings(var_dir=tmp_path, stripe_js_url="js.stripe.com/v3/")
