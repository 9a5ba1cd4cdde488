"""Stored chat completions (`store: true` on /v1/chat/completions) and stored Responses
(/v1/responses, stored unless `store: false`), each owned by the project that made it.

Both tables keep the wire object as returned (JSON) next to the few columns that are filtered on
(model, metadata, created_at), so a read returns exactly what the caller saw, and the Evals API's
`stored_completions` / `responses` data sources (service/evals/data.py) select rows with the same
filters. Another project's row reads exactly like a missing one (NotFoundError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from modelmill import errors
from modelmill.service.store.db import Database
from modelmill.service.store.evals import _page
from modelmill.service.store.records import Page, to_json

# Most rows one data-source query returns (an eval over stored rows reads them all up front).
MAX_QUERY_ROWS = 10_000


@dataclass(frozen=True)
class StoredCompletionRecord:
    id: str  # chatcmpl-...
    project_id: str
    created_at: float
    model: str
    metadata: dict | None
    request: dict  # {"messages", "tools"?, "tool_choice"?, ...}: what was asked, as validated
    completion: dict  # the chat.completion object returned


@dataclass(frozen=True)
class ResponseRecord:
    id: str  # resp_...
    project_id: str
    created_at: float
    model: str
    metadata: dict | None
    previous_response_id: str | None
    instructions: str | None
    input_items: list[dict]  # this request's input items (ItemResource shapes, with ids)
    history: list[dict]  # chat messages of the whole conversation, this response's output included
    response: dict  # the response object returned


_JSON_COLUMNS = {"metadata", "request", "completion", "input_items", "history", "response"}


def _record(cls, row):
    """A record from a row, this module's JSON columns decoded, unknown columns dropped."""
    return cls(**{k: (json.loads(row[k]) if k in _JSON_COLUMNS and row[k] is not None else row[k])
                  for k in row.keys() if k in cls.__dataclass_fields__})


def _filters(db: Database, project_id: str, model: str | None, metadata: dict | None,
             created_after: float | None = None, created_before: float | None = None) -> tuple[list[str], list]:
    where, params = ["project_id = ?"], [project_id]
    if model:
        where.append("model = ?")
        params.append(model)
    for key, value in (metadata or {}).items():
        sql, param = db.json_field("metadata", key)
        where.append(f"{sql} = ?")
        params += [param, str(value)]
    if created_after is not None:
        where.append("created_at >= ?")
        params.append(float(created_after))
    if created_before is not None:
        where.append("created_at <= ?")
        params.append(float(created_before))
    return where, params


class StoredCompletionRepo:
    def __init__(self, db: Database, clock):
        self.db = db
        self.clock = clock

    def add(self, project_id: str, completion: dict, request: dict, metadata: dict | None) -> StoredCompletionRecord:
        self.db.execute("INSERT INTO stored_completions (id, project_id, created_at, model, metadata, request,"
                        " completion) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (completion["id"], project_id, float(completion.get("created") or self.clock()),
                         completion["model"], to_json(metadata), to_json(request), to_json(completion)))
        return self.get(completion["id"], project_id=project_id)

    def get(self, completion_id: str, *, project_id: str) -> StoredCompletionRecord:
        row = self.db.one("SELECT * FROM stored_completions WHERE id = ? AND project_id = ?",
                          (completion_id, project_id))
        if row is None:
            raise errors.NotFoundError(f"No stored chat completion found with id '{completion_id}'.",
                                       param="completion_id")
        return _record(StoredCompletionRecord, row)

    def list(self, *, project_id: str, model: str | None = None, metadata: dict | None = None,
             after: str | None = None, limit: int = 20, order: str = "asc") -> Page[StoredCompletionRecord]:
        where, params = _filters(self.db, project_id, model, metadata)
        rows, more = _page(self.db, "stored_completions", where, params, after=after, limit=limit, order=order,
                           cursor_where=(["project_id = ?"], [project_id]))
        return Page([_record(StoredCompletionRecord, r) for r in rows], more)

    def query(self, *, project_id: str, model: str | None = None, metadata: dict | None = None,
              created_after: float | None = None, created_before: float | None = None,
              limit: int | None = None) -> list[StoredCompletionRecord]:
        """Oldest first, for an eval's stored_completions data source."""
        where, params = _filters(self.db, project_id, model, metadata, created_after, created_before)
        rows = self.db.all(f"SELECT * FROM stored_completions WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                           (*params, min(limit or MAX_QUERY_ROWS, MAX_QUERY_ROWS)))
        return [_record(StoredCompletionRecord, r) for r in rows]

    def update_metadata(self, completion_id: str, metadata: dict | None, *, project_id: str) -> StoredCompletionRecord:
        current = self.get(completion_id, project_id=project_id)
        completion = {**current.completion, "metadata": metadata}
        self.db.execute("UPDATE stored_completions SET metadata = ?, completion = ? WHERE id = ? AND project_id = ?",
                        (to_json(metadata), to_json(completion), completion_id, project_id))
        return self.get(completion_id, project_id=project_id)

    def delete(self, completion_id: str, *, project_id: str) -> None:
        self.get(completion_id, project_id=project_id)
        self.db.execute("DELETE FROM stored_completions WHERE id = ? AND project_id = ?", (completion_id, project_id))


class ResponseRepo:
    def __init__(self, db: Database, clock):
        self.db = db
        self.clock = clock

    def add(self, project_id: str, response: dict, input_items: list[dict], history: list[dict]) -> None:
        self.db.execute("INSERT INTO responses (id, project_id, created_at, model, metadata, previous_response_id,"
                        " instructions, input_items, history, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (response["id"], project_id, float(response["created_at"]), response["model"],
                         to_json(response.get("metadata") or None), response.get("previous_response_id"),
                         response.get("instructions"), to_json(input_items), to_json(history), to_json(response)))

    def get(self, response_id: str, *, project_id: str, param: str = "response_id") -> ResponseRecord:
        row = self.db.one("SELECT * FROM responses WHERE id = ? AND project_id = ?", (response_id, project_id))
        if row is None:
            raise errors.NotFoundError(f"Response with id '{response_id}' not found.", param=param)
        return _record(ResponseRecord, row)

    def query(self, *, project_id: str, model: str | None = None, metadata: dict | None = None,
              created_after: float | None = None, created_before: float | None = None,
              instructions_search: str | None = None, limit: int | None = None) -> list[ResponseRecord]:
        """Oldest first, for an eval's responses data source."""
        where, params = _filters(self.db, project_id, model, metadata, created_after, created_before)
        if instructions_search:
            where.append("instructions LIKE ?")
            params.append(f"%{instructions_search}%")
        rows = self.db.all(f"SELECT * FROM responses WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                           (*params, min(limit or MAX_QUERY_ROWS, MAX_QUERY_ROWS)))
        return [_record(ResponseRecord, r) for r in rows]

    def delete(self, response_id: str, *, project_id: str) -> None:
        self.get(response_id, project_id=project_id)
        self.db.execute("DELETE FROM responses WHERE id = ? AND project_id = ?", (response_id, project_id))
