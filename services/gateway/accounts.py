"""Shopper accounts: register, sign in (the anonymous cart merges into the user's), sign out, who am I.

Failed sign-ins are limited per account and per client address, registrations per client address
(:mod:`services.gateway.ratelimit`);
a wrong email and a wrong password get the same answer after the same amount of work.
"""

from __future__ import annotations

import logging
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from flask import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from werkzeug.datastructures import Headers

from cartwheel.contracts.cart import GetCart, MergeAdjustment, MergeCarts, MergeResult
from cartwheel.errors import DomainError
from services.gateway import passwords, ratelimit, store
from services.gateway.api import Routes
from services.gateway.cart import NO_STORE, CartOut, ask_cart
from services.gateway.context import gateway
from services.gateway.context import tenant as current_tenant
from services.gateway.cookies import CART_COOKIE, cart_id_from_cookie, cleared_cookie, new_cart_id
from services.gateway.errors import ApiError
from services.gateway.session import SESSION_COOKIE, end_session, signed_in_user, start_session
from services.gateway.store import EmailTaken, User

log = logging.getLogger("cartwheel.gateway.accounts")
routes = Routes(tag="accounts")

MIN_PASSWORD, MAX_PASSWORD = 10, 1024  # the upper bound keeps one request from buying a long hash


def normalised_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320),
    AfterValidator(normalised_email),
    Field(
        description="Compared case-insensitively, after normalisation.",
        examples=["ada@example.com"],
        json_schema_extra={"format": "email"},
    ),
]


class Registration(BaseModel):
    """``POST /api/auth/register``."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Annotated[str, StringConstraints(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]


class Credentials(BaseModel):
    """``POST /api/auth/login``: any password up to the maximum (rules may have changed since it was set)."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD)]


class UserOut(BaseModel):
    id: str
    email: str


class SignedIn(BaseModel):
    user: UserOut
    cart: CartOut = Field(description="The user's cart, with the anonymous cart merged in.")
    adjustments: list[MergeAdjustment] = Field(description="Lines of the anonymous cart that did not move in full.")


@routes.post(
    "/api/auth/register",
    summary="Create a shopper account (does not sign in)",
    body=Registration,
    response=UserOut,
    status=201,
    errors=(409, 429, 503),
)
def register(body: Registration) -> tuple[UserOut, dict[str, str]]:
    ratelimit.count_registration(ratelimit.client_address())
    if store.user_by_email(body.email) is not None:  # before hashing: a duplicate costs no CPU
        raise _taken()
    try:
        user = store.create_user(body.email, passwords.hash_password(body.password))
    except EmailTaken:  # registered by a concurrent request meanwhile
        raise _taken() from None
    return UserOut(id=user.id, email=user.email), NO_STORE


@routes.post(
    "/api/auth/login",
    summary="Sign in: sets the session cookie; the anonymous cart merges into the user's cart",
    body=Credentials,
    response=SignedIn,
    errors=(401, 429, 503),
)
def login(body: Credentials) -> tuple[SignedIn, Headers]:
    attempt = ratelimit.begin_attempt(body.email, ratelimit.client_address())
    user = store.user_by_email(body.email)
    if user is None:
        passwords.spend_a_verify(body.password)
    if user is None or not passwords.verify_password(user.password_hash, body.password):
        raise ApiError(401, "invalid_credentials", "the email or the password is not right")
    ratelimit.attempt_succeeded(attempt)
    if passwords.needs_rehash(user.password_hash):  # hashing parameters were raised since this one was made
        store.set_password_hash(user.id, passwords.hash_password(body.password))
    cart, adjustments = _carry_cart(user)
    end_session()  # a session this browser had before is replaced, not left running
    headers = Headers(NO_STORE)
    headers.add("Set-Cookie", start_session(user.id))
    headers.add("Set-Cookie", cleared_cookie(CART_COOKIE))  # from now on the session names the cart
    return SignedIn(user=UserOut(id=user.id, email=user.email), cart=cart, adjustments=adjustments), headers


@routes.post("/api/auth/logout", summary="Sign out: the session ends on the server too", status=204, errors=(503,))
def logout() -> Response:
    end_session()
    headers = Headers(NO_STORE)
    headers.add("Set-Cookie", cleared_cookie(SESSION_COOKIE))
    headers.add("Set-Cookie", cleared_cookie(CART_COOKIE))
    return Response(status=204, headers=headers)


@routes.get("/api/auth/me", summary="The signed-in shopper", response=UserOut, errors=(401, 503))
def me() -> tuple[UserOut, dict[str, str]]:
    user = signed_in_user()
    if user is None:
        raise ApiError(401, "unauthorized", "not signed in")
    return UserOut(id=user.id, email=user.email), NO_STORE


def _carry_cart(user: User) -> tuple[CartOut, list[MergeAdjustment]]:
    """The user's cart after sign-in: the anonymous cart of this browser merged into it, if there is one."""
    tenant = current_tenant()
    anonymous = cart_id_from_cookie()
    if anonymous is None or anonymous == user.cart_id:
        return (ask_cart(GetCart(tenant=tenant, cart_id=user.cart_id)) if user.cart_id else CartOut.empty()), []
    target = user.cart_id or store.give_cart(user.id, new_cart_id())  # the cart service starts it on merge
    merge = MergeCarts(tenant=tenant, source_cart_id=anonymous, target_cart_id=target, email=user.email)
    try:
        try:
            result = MergeResult.model_validate(gateway().bus.request(merge))
        except DomainError as refusal:
            if refusal.code != "cart_closed" or refusal.details.get("cart") != "target":
                raise
            # The user's own cart was checked out: they get a new one, and the anonymous lines go there.
            target = store.give_cart(user.id, new_cart_id(), replacing=target)
            merge = merge.model_copy(update={"target_cart_id": target})
            result = MergeResult.model_validate(gateway().bus.request(merge))
    except DomainError as refusal:
        if refusal.code != "cart_closed":
            raise
        # The anonymous cart went elsewhere (merged into another account, checked out): nothing to carry.
        log.info("sign-in of user %s: cart %s not merged (%s)", user.id, anonymous, refusal.message)
        return ask_cart(GetCart(tenant=tenant, cart_id=target)), []
    return CartOut.model_validate(result.cart.model_dump()), result.adjustments


def _taken() -> ApiError:
    return ApiError(409, "email_taken", "an account with this email exists already")
