"""A fake catalog on a real NATS server, for integration tests of the gateway (never the real catalog service)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cartwheel import subjects
from cartwheel.contracts.base import Reply
from cartwheel.contracts.catalog import (
    CreateProduct,
    GetProduct,
    ListProducts,
    Product,
    ProductPage,
    UpdateProduct,
)
from cartwheel.errors import DomainError, NotFound


class FakeCatalog:
    """A stand-in catalog on a real NATS server, in its own thread: products in a dict, replies like the real one.

    ``hold(sku)`` keeps replies about that sku back until ``release(sku)``; ``received`` lists the
    subjects it was asked on, in order.
    """

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.products: dict[str, Product] = {}
        self.received: list[str] = []
        self._held: dict[str, tuple[threading.Event, asyncio.Event]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-catalog", daemon=True)
        self._nc: NatsClient | None = None

    def start(self) -> FakeCatalog:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._nc is not None:
            asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def add(self, **fields: Any) -> Product:
        now = datetime.now(UTC)
        defaults = {
            "id": str(uuid.uuid4()),
            "sku": f"sku-{uuid.uuid4().hex[:12]}",
            "name": "Product",
            "description": "",
            "price_cents": 1000,
            "currency": "EUR",
            "active": True,
            "version": 1,
        }
        product = Product.model_validate({**defaults, "created_at": now, "updated_at": now, **fields})
        self.products[product.id] = product
        return product

    def hold(self, sku: str) -> threading.Event:
        """Hold replies about ``sku``; the returned event is set once such a request has arrived."""
        arrived = threading.Event()
        self._held[sku] = (arrived, asyncio.Event())
        return arrived

    def release(self, sku: str) -> None:
        self._loop.call_soon_threadsafe(self._held[sku][1].set)

    async def _subscribe(self) -> None:
        self._nc = NatsClient()
        await self._nc.connect(self.nats_url, name="fake-catalog")
        answers = {
            subjects.CATALOG_PRODUCTS_GET: self._get,
            subjects.CATALOG_PRODUCTS_LIST: self._list,
            subjects.CATALOG_PRODUCTS_CREATE: self._create,
            subjects.CATALOG_PRODUCTS_UPDATE: self._update,
        }
        for subject, answer in answers.items():
            await self._nc.subscribe(subject, queue="catalog", cb=self._spawn(answer))
        await self._nc.subscribe(subjects.health("catalog"), cb=self._health)
        await self._nc.flush()  # the server knows the subscriptions before anyone asks

    def _spawn(self, answer: Callable[[bytes], Awaitable[Any]]) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            self.received.append(msg.subject)
            # A task per request, so a held reply doesn't hold up the others.
            asyncio.get_running_loop().create_task(self._reply(msg, answer))

        return on_message

    async def _reply(self, msg: Msg, answer: Callable[[bytes], Awaitable[Any]]) -> None:
        try:
            reply = Reply.success(await answer(msg.data))
        except DomainError as error:
            reply = Reply.failure(error.code, error.message, **error.details)
        await msg.respond(reply.model_dump_json().encode())

    async def _health(self, msg: Msg) -> None:
        await msg.respond(b'{"service": "catalog", "status": "ok"}')

    async def _get(self, data: bytes) -> Any:
        query = GetProduct.model_validate_json(data)
        product = self._find(query.id_or_sku)
        if product.sku in self._held:
            arrived, released = self._held[product.sku]
            arrived.set()
            await released.wait()
        return product.model_dump(mode="json")

    async def _list(self, data: bytes) -> Any:
        query = ListProducts.model_validate_json(data)
        items = [p for p in self.products.values() if p.active or query.include_inactive]
        items = [p for p in items if not query.q or query.q.lower() in f"{p.sku} {p.name}".lower()]
        return ProductPage(items=items[: query.limit]).model_dump(mode="json")

    async def _create(self, data: bytes) -> Any:
        draft = CreateProduct.model_validate_json(data).draft
        if any(p.sku == draft.sku for p in self.products.values()):
            raise DomainError(f"sku {draft.sku} exists", code="duplicate_sku", sku=draft.sku)
        return self.add(**draft.model_dump(exclude={"stock"})).model_dump(mode="json")

    async def _update(self, data: bytes) -> Any:
        command = UpdateProduct.model_validate_json(data)
        product = self.products.get(command.product_id)
        if product is None:
            raise NotFound("no such product")
        changes = command.patch.model_dump(exclude_unset=True)
        updated = product.model_copy(update={**changes, "version": product.version + 1})
        self.products[updated.id] = updated
        return updated.model_dump(mode="json")

    def _find(self, id_or_sku: str) -> Product:
        for product in self.products.values():
            if id_or_sku in (product.id, product.sku):
                return product
        raise NotFound("no such product")
