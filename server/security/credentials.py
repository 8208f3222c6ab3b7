"""Secrets at rest: argon2 password hashes, and API keys that are shown once and stored only as a SHA-256 hash."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KEY_PREFIX = "cf_"
VISIBLE_PREFIX_LENGTH = 10  # "cf_" and 7 random characters: enough to tell keys apart in a list

# argon2 runs in threads of their own at a low CPU priority (Linux nice is per thread, and argon2's lane threads
# inherit it): a login flood then takes only the CPU that serving leaves idle, and never the default thread pool.
HASH_THREADS = 4
HASH_NICENESS = 19
T = TypeVar("T")


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


_hash_pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="argon2", initializer=_lower_priority)


async def _in_hash_thread(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hash_pool, work)


_hasher = PasswordHasher()
# Verifying a password the user does not have still costs one argon2 run, so that timing does not reveal
# which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow (tens of ms): keep it off the event loop.
    return await _in_hash_thread(lambda: _hasher.hash(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await _in_hash_thread(verify)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_hash(key: str) -> str:
    """Keys carry 256 random bits, so a fast hash is enough (no salt, no stretching) and allows lookup by hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_LENGTH]


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)
