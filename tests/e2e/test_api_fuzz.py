"""Every operation of the running shop's own ``/openapi.json``, fuzzed by schemathesis: nothing a client sends
is a 500, and every answer has a status, content type, headers and body the spec documents. Operation by
operation, then statefully: sequences that follow the spec's links (and the links schemathesis infers from
the response schemas), so the fuzzer reaches what stands behind ids the shop really made.

Deterministic and bounded: a fixed seed, derandomized generation and a few examples per operation
(schemathesis's examples, coverage and fuzzing phases, valid and invalid input). The fuzzer shares the
session's shop with the other e2e tests, so it leaves the shop as it found it:

- it connects from a loopback address of its own, so its registrations and failed sign-ins count
  against that address's rate limits, not against the one every other test signs in from;
- product and order ids (in paths, and in cart and checkout bodies) are half the time a product and an
  order this module makes, half generated (a generated id names nothing: not a seeded product's uuid, not
  a seeded sku), so the admin's changes (prices, stock, images, cancels) land on those, never on the seeded
  catalog;
- every product the fuzzer creates is deactivated afterwards, so listings show the catalog as before.

Not fuzzed: ``GET /api/cart/events``, whose stream never ends while the client listens (it takes no
parameters and no body to fuzz; ``test_cart_sse.py`` covers it). Nothing else is skipped: there is no
admin delete, and signing out ends the session of the fuzzer's own cookies, not the admin's bearer token.
The Stripe webhook is fuzzed unsigned: any signature the fuzzer makes up must be a 400.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.pytest.lazy import get_all_tests
from schemathesis.schemas import BaseSchema

from cartwheel.supervisor import System
from tests.e2e.test_cart_http import product

FUZZER_ADDRESS = "127.0.0.2"  # Linux answers the whole of 127.0.0.0/8 on the loopback interface
SEED = 12
EXAMPLES = 20  # per operation and fuzzing mode; the examples and coverage phases add their own few
TIMEOUT = 20
SKIPPED = ["/api/cart/events"]
NO_LINKS = [  # routes no declared link leads to (mails, a signed download, unsubscribe): fuzzed one by one only
    "/api/admin/mail", "/api/admin/orders/{order_id}/mails", "/api/admin/orders/{order_id}/mails/{mail_id}/resend",
    "/api/downloads/{order_id}/{product_id}", "/api/unsubscribe",
]
WEBHOOK = "/webhooks/stripe"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
STATEFUL_RUNS = 15  # scenarios in a batch (about 1 of 10 steps follows a declared link) ...
STATEFUL_BATCHES = 3  # ... and batches at most, until one does
STATEFUL_STEPS = 6
LOG_SETTLES = 0.5  # the services' output reaches the log through the supervisor's pipes


class FromFuzzerAddress(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, source_address=(FUZZER_ADDRESS, 0), **kwargs)


@dataclass
class Created:
    """Products the fuzzer created, to deactivate afterwards."""

    product_ids: list[str] = field(default_factory=list)

    def note(self, response: requests.Response) -> None:
        request = response.request
        if request.method == "POST" and request.path_url == "/api/admin/products" and response.status_code == 201:
            self.product_ids.append(response.json()["id"])


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[requests.Session]:
    """The fuzzer's client: its own address, and its own cookies (cart, orders, session) kept across operations."""
    with requests.Session() as session:
        session.mount("http://", FromFuzzerAddress())
        yield session


@pytest.fixture(scope="module")
def created(system: System) -> Iterator[Created]:
    made = Created()
    yield made
    admin = {"Authorization": f"Bearer {system.admin_token}"}
    for product_id in made.product_ids:
        url = f"{system.base_url}/api/admin/products/{product_id}"
        requests.patch(url, json={"active": False}, headers=admin, timeout=TIMEOUT).raise_for_status()


@pytest.fixture(scope="module")
def shop_schema(system: System, fuzzer: requests.Session) -> BaseSchema:
    """The shop's own description of itself, with the admin token and the ids of a product and an order of the
    fuzzer's (its cookie lists the order, so paying it gets past the buyer check)."""
    teapot = product(system, stock=1_000)
    body = {"items": [{"product_id": teapot["id"], "quantity": 1}]}
    placed = fuzzer.post(f"{system.base_url}/api/checkout", json=body, timeout=TIMEOUT)
    assert placed.status_code == 201, placed.text
    products = {"dictionary": "products", "probability": 0.5}
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "base-url": system.base_url,
        "request-timeout": TIMEOUT,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "auth": {"openapi": {"adminBearer": {"bearer": system.admin_token}}},
        "dictionaries": {
            "products": {"values": [teapot["id"], teapot["sku"]]},
            "orders": {"values": [placed.json()["order_id"]]},
        },
        "parameters": {
            "path.id": products,
            "path.id_or_sku": products,
            "path.product_id": products,
            "body.product_id": products,
            "body.items[*].product_id": products,
            "path.order_id": {"dictionary": "orders", "probability": 0.5},
        },
    })
    schema = schemathesis.openapi.from_url(f"{system.base_url}/openapi.json", config=config, timeout=TIMEOUT)
    return schema.exclude(path=SKIPPED)


def test_nothing_a_client_sends_is_a_server_error(
    system: System, shop_schema: BaseSchema, fuzzer: requests.Session, created: Created
) -> None:
    log = system.var_dir / "system.log"
    logged_before = log.stat().st_size
    failures: list[str] = []
    # One hypothesis test per operation, as schemathesis.pytest.from_fixture makes them (that one sets an
    # attribute of pytest's nodes that pytest 9.2 no longer has).
    for result in get_all_tests(schema=shop_schema, test_func=call, settings=None, given_kwargs={}):
        operation, test = result.ok()
        try:
            test(fuzzer=fuzzer, created=created)
        except Exception as failure:  # schemathesis's FailureGroup says what failed, with a curl to reproduce it
            failures.append(f"{operation.label}: {failure}")
    assert not failures, "\n\n".join(failures)
    time.sleep(LOG_SETTLES)
    with log.open(encoding="utf-8") as output:
        output.seek(logged_before)
        assert "Traceback" not in output.read(), f"the shop logged a stack trace while fuzzed; see {log}"


def test_sequences_that_follow_the_specs_links_reach_real_ids_and_no_server_error(
    system: System, shop_schema: BaseSchema, fuzzer: requests.Session, created: Created
) -> None:
    """Stateful: schemathesis chains operations along /openapi.json's links (a created product is then read,
    patched, given an image and stock; a placed order is read, paid, cancelled), so it reaches the paths
    behind real ids, with the same checks. Bounded: at most STATEFUL_BATCHES batches (the first with a fixed
    seed) of STATEFUL_RUNS scenarios of at most STATEFUL_STEPS calls each."""
    log = system.var_dir / "system.log"
    logged_before = log.stat().st_size
    followed: list[str] = []

    class ShopMachine(shop_schema.exclude(path=NO_LINKS).as_state_machine()):  # type: ignore[misc]
        def call(self, case: Case, **kwargs: Any) -> Any:
            response = case.call(session=fuzzer, timeout=TIMEOUT, **kwargs)
            created.note(response)
            return response

        def step(self, input: Any) -> Any:
            if input.transition is not None:
                followed.append(input.transition.id)
            return super().step(input)

        def validate_response(self, response: Any, case: Case, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    # The links the gateway declares (schemathesis infers more of its own).
    declared = {"GetOrder", "PayOrder", "CancelOrder", "GetProduct", "UpdateProduct", "UploadImage",
                "UploadFile", "GetStock", "Restock", "SetStock"}

    def reached_a_declared_link() -> bool:
        return any(transition.split("] ", 1)[-1].split(" -> ", 1)[0] in declared for transition in followed)

    # A batch of scenarios, seeded the same each time; then, until a declared link was followed, batches seeded
    # anew. Hypothesis ends a batch with FlakyStrategyDefinition when two scenarios that began alike went on
    # differently: the live shop's answers steer which link comes next (a sku an earlier scenario took: 409,
    # not 201). That is the fuzzer losing its place, not the shop failing: that batch is run again. Any
    # check's failure (a server error, an undocumented answer) still fails the test at once.
    completed = 0
    for batch in range(STATEFUL_BATCHES):
        try:
            ShopMachine.run(settings=hypothesis.settings(
                max_examples=STATEFUL_RUNS, stateful_step_count=STATEFUL_STEPS, deadline=None,
                derandomize=batch == 0, database=None, phases=[hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
            ))
            completed += 1
        except hypothesis.errors.FlakyStrategyDefinition as lost:
            warnings.warn(f"stateful batch {batch + 1} lost its place ({str(lost).splitlines()[0]}); another one",
                          stacklevel=1)
            continue
        if reached_a_declared_link():
            break
    assert completed, f"none of {STATEFUL_BATCHES} stateful batches ran to its end"
    assert reached_a_declared_link(), "\n".join(followed)
    time.sleep(LOG_SETTLES)
    with log.open(encoding="utf-8") as output:
        output.seek(logged_before)
        assert "Traceback" not in output.read(), f"the shop logged a stack trace while fuzzed; see {log}"


def call(case: Case, fuzzer: requests.Session, created: Created) -> None:
    response = case.call(session=fuzzer, timeout=TIMEOUT)
    created.note(response)
    case.validate_response(response, checks=CHECKS)
    if (case.method, case.path) == ("POST", WEBHOOK):  # no signature the fuzzer makes up verifies
        assert response.status_code == 400, response.text
