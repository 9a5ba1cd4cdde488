"""OpenAI-style object ids: a type prefix plus random base62 characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_chars(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 24) -> str:
    """new_id("file-") -> "file-3kq..."; the prefix carries its own separator."""
    return prefix + random_chars(n)
