"""Order rules, free of I/O: the state machine, prices checked against the cart's snapshots, totals.

``pending → reserved → awaiting_payment → paid → fulfilled``; ``cancelled``, ``expired`` and
``refunded`` end an order. ``payment_failed`` (a declined attempt) keeps the order's stock until
its reservation runs out, as ``awaiting_payment`` does: Stripe lets the buyer try again on the same
intent, with another card; then it ends ``expired``, its intent cancelled. A payment may still
succeed after an order expired (the buyer's bank was slow): then the order is paid if its stock
can be reserved again, else refunded — hence the moves out of ``expired``. Money for a
``cancelled`` order is always refunded. A chargeback makes a paid order ``disputed`` until the
dispute closes: ``paid`` again when the shop wins it, ``dispute_lost`` (the money is gone) when
not. A payment that took in another amount or currency than the order's puts it in
``needs_review``, for a person: its stock is not committed (the reservation runs out), and
cancelling it refunds the payment.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cartwheel.contracts.catalog import Product
from cartwheel.contracts.orders import OrderLine, OrderStatus, PriceChange, ShortLine
from cartwheel.errors import DomainError

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    "pending": frozenset({"reserved", "cancelled"}),
    "reserved": frozenset({"awaiting_payment", "paid", "cancelled", "expired", "payment_failed", "needs_review"}),
    "awaiting_payment": frozenset({"paid", "cancelled", "expired", "payment_failed", "needs_review"}),
    "paid": frozenset({"fulfilled", "refunded", "disputed", "needs_review"}),  # the last: its refund failed
    "fulfilled": frozenset({"refunded", "disputed", "needs_review"}),
    "cancelled": frozenset({"refunded", "needs_review"}),
    "expired": frozenset({"paid", "refunded", "needs_review"}),
    "payment_failed": frozenset({"paid", "cancelled", "expired", "refunded", "needs_review"}),
    "needs_review": frozenset({"refunded", "cancelled"}),  # cancelled: there was no payment to give back
    "disputed": frozenset({"paid", "dispute_lost", "refunded"}),  # refunded: an inquiry may be refunded
    "dispute_lost": frozenset(),
    "refunded": frozenset({"needs_review"}),  # a refund that failed after all: the buyer has not got the money
}
"""Where each status may go next. A status not listed as a target of ``X`` is refused from ``X``."""

HOLDS_STOCK: frozenset[OrderStatus] = frozenset({"reserved", "awaiting_payment", "payment_failed"})
"""Orders whose reservation holds their units until it runs out (then the sweeper expires them)."""
RESUMABLE: tuple[OrderStatus, ...] = ("pending", "reserved")
"""Where a checkout a crash interrupted is left: the sweeper resumes it (or lets its stock go)."""
PAID: frozenset[OrderStatus] = frozenset({"paid", "fulfilled"})


def payment_mismatch(total_cents: int, currency: str, received_cents: int | None,
                     received_currency: str | None) -> str | None:
    """Why a payment can't settle an order of ``total_cents`` in ``currency`` (None: it can, or it did not say)."""
    if received_cents is None or received_currency is None:
        return None
    if (received_cents, received_currency.upper()) == (total_cents, currency.upper()):
        return None
    return (f"the payment took in {received_cents} {received_currency.upper()} for an order of {total_cents} "
            f"{currency.upper()}")


class IllegalTransition(DomainError):
    code = "illegal_transition"


def check_transition(current: OrderStatus, to: OrderStatus) -> None:
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"an order that is {current} cannot become {to}", status=current, requested=to)


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


PLACED_PATH: tuple[tuple[OrderStatus, str], ...] = (
    ("pending", "checkout"),
    ("reserved", "stock reserved"),
    ("awaiting_payment", "payment intent created"),
)
"""The history of a new order: written at once, when its lines are reserved and its intent exists."""


def out_of_stock(short: list[ShortLine]) -> DomainError:
    """The refusal of a checkout whose ``short`` lines could not be reserved."""
    return DomainError(
        "not enough stock for " + ", ".join(line.product_id for line in short),
        code="out_of_stock",
        lines=[line.model_dump() for line in short],
        **({"available": short[0].available, "product_id": short[0].product_id} if len(short) == 1 else {}),
    )


def reservation_id(order_id: str) -> str:
    """The inventory reservation holding an order's lines (one id for every product of the order)."""
    return order_id


def late_reservation(order_id: str) -> str:
    """Where a payment that came after the order's reservation ended reserves its lines again.

    One per order (a payment succeeds once): a retried late payment finds its own reservation,
    held or committed, and never takes the units twice.
    """
    return f"{order_id}.late"


@dataclass(frozen=True)
class Wanted:
    """A line to buy: from the cart (with the price it was added at) or from buy-now items (no snapshot)."""

    product_id: str
    quantity: int
    snapshot_price_cents: int | None = None


def price_lines(
    wanted: Iterable[Wanted], products: Mapping[str, Product]
) -> tuple[list[OrderLine], list[PriceChange], str]:
    """Order lines at today's prices, the lines whose price moved since they went into the cart, and the currency.

    ``products`` maps what each wanted line names (a product id or a SKU) to the product; lines that
    name one product twice (its id and its SKU) become one line. Refuses products that are gone,
    inactive, or in more than one currency, and an order that costs nothing (there is no payment to take).
    """
    named: list[Wanted] = []
    for item in wanted:
        found = products.get(item.product_id)
        if found is None:
            raise DomainError(f"product {item.product_id} does not exist", code="not_found", product_id=item.product_id)
        named.append(Wanted(found.id, item.quantity, item.snapshot_price_cents))
    by_id = {product.id: product for product in products.values()}
    lines: list[OrderLine] = []
    changes: list[PriceChange] = []
    for item in merge_wanted(named):
        product = by_id[item.product_id]
        if not product.active:
            raise DomainError(
                f"{product.name} is no longer for sale", code="not_for_sale", product_id=product.id, sku=product.sku
            )
        if item.snapshot_price_cents is not None and item.snapshot_price_cents != product.price_cents:
            changes.append(
                PriceChange(
                    product_id=product.id,
                    sku=product.sku,
                    name=product.name,
                    old_unit_price_cents=item.snapshot_price_cents,
                    new_unit_price_cents=product.price_cents,
                )
            )
        lines.append(
            OrderLine(
                product_id=product.id,
                sku=product.sku,
                name=product.name,
                quantity=item.quantity,
                unit_price_cents=product.price_cents,
                line_total_cents=product.price_cents * item.quantity,
                digital=product.digital,
            )
        )
    currencies = {by_id[line.product_id].currency for line in lines}
    if len(currencies) != 1:
        raise DomainError("an order is paid in one currency", code="currency_mismatch", currencies=sorted(currencies))
    if total_cents(lines) == 0:
        raise DomainError("these products cost nothing: there is no payment to take", code="nothing_to_pay")
    return lines, changes, currencies.pop()


def merge_wanted(items: Iterable[Wanted]) -> list[Wanted]:
    """One line per product (buy-now bodies may repeat a product): quantities add, first snapshot kept."""
    merged: dict[str, Wanted] = {}
    for item in items:
        if item.product_id in merged:
            first = merged[item.product_id]
            merged[item.product_id] = Wanted(
                item.product_id, first.quantity + item.quantity, first.snapshot_price_cents
            )
        else:
            merged[item.product_id] = item
    return list(merged.values())


def total_cents(lines: Iterable[OrderLine]) -> int:
    return sum(line.line_total_cents for line in lines)


INTENT_AHEAD_MARGIN = 20
"""Units a product must have left beyond what this process is reserving of it for a checkout to ask
for its PaymentIntent while the lane reserves (so a refusal, which then cancels the intent, stays rare)."""
HINT_FRESH_S = 5.0
"""How long what a lane said of a product's stock counts as a hint."""


@dataclass
class StockHints:
    """What this process last heard of each product's available stock (its lane's answers) and how
    many units its checkouts are reserving right now (their answers not heard yet).

    A checkout asks for its intent at the same time as it reserves only when every line has plenty
    left beyond those (:meth:`plenty`). For the last units of a flash sale, for a product never heard
    of, and after a refusal, the intent waits for the reservation: a refused buyer costs the payment
    provider nothing.
    """

    seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    ahead: dict[str, int] = field(default_factory=dict)

    def heard(self, product_id: str, available: int | None, now: float) -> None:
        if available is not None:
            self.seen[product_id] = (available, now)

    def plenty(self, lines: Iterable[OrderLine], now: float) -> bool:
        for line in lines:
            known = self.seen.get(line.product_id)
            if known is None or now - known[1] > HINT_FRESH_S:
                return False
            if known[0] - self.ahead.get(line.product_id, 0) < line.quantity + INTENT_AHEAD_MARGIN:
                return False
        return True

    def begin(self, lines: Iterable[OrderLine]) -> None:
        for line in lines:
            self.ahead[line.product_id] = self.ahead.get(line.product_id, 0) + line.quantity

    def end(self, lines: Iterable[OrderLine]) -> None:
        for line in lines:
            left = self.ahead.get(line.product_id, 0) - line.quantity
            if left > 0:
                self.ahead[line.product_id] = left
            else:
                self.ahead.pop(line.product_id, None)
