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
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.records import DEFAULT_PROJECT_ID, ApiKeyRecord, from_row

# Seconds between refreshes of a session's last_used_at (idle expiry is that much less precise).
SESSION_TOUCH_SECONDS = 60.0
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

    def revoke(self, key_id: str, project_id: str | None = None) -> None:
        """Delete key `key_id` and every dashboard session signed in with it, at once (the next request
        with either is a 401). project_id: only a key of that project (another's is NotFoundError)."""
        key = self.get(key_id)
        if project_id is not None and key.project_id != project_id:
            raise errors.NotFoundError(f"No such API key: {key_id}", param="key_id")
        with self.db.transaction() as c:
            c.execute("DELETE FROM login_sessions WHERE key_id = ?", (key_id,))
            c.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))

    # -- dashboard sign-ins: the cookie holds a token standing for a key, never the key itself --

    def start_session(self, key: ApiKeyRecord) -> str:
        """A new sign-in for `key`; returns the token for the cookie (stored only as its sha256)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.db.execute("INSERT INTO login_sessions (token_hash, key_id, project_id, created_at, last_used_at)"
                        " VALUES (?, ?, ?, ?, ?)", (hash_key(token), key.id, key.project_id, now, now))
        return token

    def session_project(self, token: str | None, idle_seconds: float) -> str | None:
        """The project of the live session `token` (its key not revoked, used within idle_seconds),
        else None. Looked up by hash: the token is 256-bit random, so the index lookup's timing
        tells nothing useful. last_used_at is refreshed at most once a minute (fewer writes)."""
        if not token:
            return None
        now = time.time()
        row = self.db.one("SELECT s.project_id, s.last_used_at FROM login_sessions s JOIN api_keys k"
                          " ON k.id = s.key_id WHERE s.token_hash = ?", (hash_key(token),))
        if row is None or now - row["last_used_at"] > idle_seconds:
            return None
        if now - row["last_used_at"] > SESSION_TOUCH_SECONDS:
            self.db.execute("UPDATE login_sessions SET last_used_at = ? WHERE token_hash = ?", (now, hash_key(token)))
        return row["project_id"]

    def session_key_id(self, token: str | None) -> str | None:
        """The id of the key session `token` signed in with, while both exist (idle time not checked)."""
        if not token:
            return None
        row = self.db.one("SELECT s.key_id FROM login_sessions s JOIN api_keys k ON k.id = s.key_id"
                          " WHERE s.token_hash = ?", (hash_key(token),))
        return row["key_id"] if row is not None else None

    def end_session(self, token: str | None) -> None:
        if token:
            self.db.execute("DELETE FROM login_sessions WHERE token_hash = ?", (hash_key(token),))

    def sweep_sessions(self, idle_seconds: float) -> None:
        """Delete sessions idle longer than idle_seconds (they are refused anyway; this keeps the table small)."""
        self.db.execute("DELETE FROM login_sessions WHERE last_used_at < ?", (time.time() - idle_seconds,))

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
