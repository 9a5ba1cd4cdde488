"""API keys: only a sha256 of each key is stored; checks compare in constant time.
Each key belongs to one project (store/projects.py): requests made with it act in that project.

Keys are 256-bit random tokens, so a fast hash is enough (slow KDFs such as scrypt exist
to protect low-entropy passwords, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from modelmill import errors
from modelmill.service.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.records import DEFAULT_PROJECT_ID, ApiKeyRecord, from_row

KEY_PREFIX = "sk-"  # as OpenAI's keys, so tools that recognise (and redact) API keys recognise these


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRepo:
    def __init__(self, db: Database):
        self.db = db

    def create(self, name: str, project_id: str = DEFAULT_PROJECT_ID) -> tuple[ApiKeyRecord, str]:
        """A new key of `project_id`. Returns (record, plaintext); the plaintext is shown once and never stored."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = new_id("key_", 16)
        self.db.execute("INSERT INTO api_keys (id, name, prefix, key_hash, created_at, project_id)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (key_id, name, plaintext[:8], hash_key(plaintext), time.time(), project_id))
        return self.get(key_id), plaintext

    def get(self, key_id: str) -> ApiKeyRecord:
        row = self.db.one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise errors.NotFoundError(f"No such API key: {key_id}", param="key_id")
        return from_row(ApiKeyRecord, row)

    def list(self) -> list[ApiKeyRecord]:
        return [from_row(ApiKeyRecord, r) for r in self.db.all("SELECT * FROM api_keys ORDER BY seq")]

    def revoke(self, key_id: str) -> None:
        self.get(key_id)
        self.db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))

    def any(self) -> bool:
        return self.db.one("SELECT 1 FROM api_keys LIMIT 1") is not None

    def verify(self, presented: str | None) -> ApiKeyRecord | None:
        """The key record matching `presented`, or None. Every stored hash is compared,
        each with hmac.compare_digest, so timing reveals neither which nor how much matched."""
        if not presented:
            return None
        digest = hash_key(presented)
        match = None
        for row in self.db.all("SELECT * FROM api_keys"):
            if hmac.compare_digest(row["key_hash"], digest):
                match = row
        if match is None:
            return None
        self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (time.time(), match["id"]))
        return from_row(ApiKeyRecord, match)
