"""Argon2id password hashes, computed off the gevent loop so a worker keeps serving while one is made.

A hash takes about 0.1 s of CPU and 64 MiB (argon2-cffi's RFC 9106 defaults). argon2-cffi releases the
GIL, so in gevent's thread pool it runs beside the worker's greenlets; a pool of two per worker bounds
the memory (2 x 64 MiB) and lets further sign-ins queue instead of piling up.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

T = TypeVar("T")
HASHING_THREADS = 2
_hasher = PasswordHasher()
_pool_lock = threading.Lock()
_pool: Any = None


def hash_password(password: str) -> str:
    return _off_the_loop(_hasher.hash, password)


def verify_password(password_hash: str, password: str) -> bool:
    return _off_the_loop(_verify, password_hash, password)


def spend_a_verify(password: str) -> None:
    """As long as a real check, for an unknown account: the answer's timing does not tell who has one."""
    _off_the_loop(_verify_against_dummy, password)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _verify_against_dummy(password: str) -> bool:
    return _verify(_dummy_hash(), password)  # the first call makes the dummy hash here, in the pool, too


@cache
def _dummy_hash() -> str:
    return _hasher.hash("not anyone's password")


def _off_the_loop(work: Callable[..., T], *args: Any) -> T:
    pool = _gevent_pool()
    return work(*args) if pool is None else pool.apply(work, args)


def _gevent_pool() -> Any:
    """gevent's thread pool when this process runs under gevent (the gateway's workers); else None."""
    global _pool
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from gevent.threadpool import ThreadPool

                _pool = ThreadPool(HASHING_THREADS)
    return _pool
