"""The running shop's bus (the embedded nats-server ``cartwheel up`` starts) as a stranger and as one service
trying another's subjects find it: the probe's exact attack (finding 1 of issue 13) fails."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from cartwheel import natsauth
from cartwheel.contracts.orders import ListOrders
from cartwheel.supervisor import System


def test_the_shops_bus_refuses_a_client_without_credentials(system: System) -> None:
    async def list_orders() -> None:
        nc = await nats.connect(system.settings.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:  # before: every order, with buyer emails and client secrets
            await nc.request(ListOrders.subject, ListOrders(tenant=system.settings.tenant).model_dump_json().encode(),
                             timeout=2)
        finally:
            await nc.close()

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(list_orders())


def test_one_services_key_does_not_open_anothers_subjects(system: System) -> None:
    seed = (system.settings.var_dir / natsauth.KEYS_DIR / "catalog.nk").read_text().strip()
    errors: list[str] = []

    async def list_orders() -> None:
        async def note(error: Exception) -> None:
            errors.append(str(error))

        nc = await nats.connect(system.settings.nats_url, nkeys_seed_str=seed, error_cb=note,
                                inbox_prefix=natsauth.inbox_prefix("catalog"))
        try:
            with pytest.raises(nats.errors.TimeoutError):  # the server drops it: orders never hears
                await nc.request(ListOrders.subject,
                                 ListOrders(tenant=system.settings.tenant).model_dump_json().encode(), timeout=1)
        finally:
            await nc.close()

    asyncio.run(list_orders())
    assert f'nats: permissions violation for publish to "{ListOrders.subject}"' in errors


def test_no_process_of_the_shop_was_refused_anything_it_needs(system: System) -> None:
    """Each process's permissions cover all it does: the server logged no violation except this module's own
    attempts (under catalog's key, above). Runs after the e2e tests before it in the session."""
    seed = (system.settings.var_dir / natsauth.KEYS_DIR / "catalog.nk").read_text().strip()
    mine = f"nkey:{natsauth.public_key(seed)}"
    refused = [line for line in (system.settings.var_dir / "system.log").read_text(errors="replace").splitlines()
               if "Violation" in line and not (mine in line and ListOrders.subject in line)]
    assert refused == []
