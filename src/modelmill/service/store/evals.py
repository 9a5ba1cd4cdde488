"""Evals, their runs and the runs' output items as the API sees them.

An eval holds a data-source config (the item JSON schema) and testing criteria (graders).
A run is one pass over a data source; the worker executes it under a lease of its own
(store/run_queue.py), writing one output item per data-source item. Like jobs, a
run someone holds is cancelled by *request* (requested_action), which the worker honours
between batches; a run nobody holds is cancelled here, bumping lease_token to fence out any
worker that still thinks it owns it.

    queued -> in_progress -> completed | failed | canceled
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store import webhooks
from modelmill.service.store.db import Database
from modelmill.service.store.pagination import MAX_LIMIT
from modelmill.service.store.records import DEFAULT_PROJECT_ID, Leased, Page, in_project, to_json

RUN_STATUSES = ("queued", "in_progress", "completed", "failed", "canceled")
RUN_TERMINAL = ("completed", "failed", "canceled")
RUN_ACTIVE = ("queued", "in_progress")
ITEM_STATUSES = ("pass", "fail", "error")
EMPTY_COUNTS = {"total": 0, "errored": 0, "failed": 0, "passed": 0}


@dataclass(frozen=True)
class EvalRecord:
    id: str
    name: str
    created_at: float
    updated_at: float
    metadata: dict | None
    data_source_config: dict  # {type: "custom", item_schema, include_sample_schema}
    testing_criteria: list[dict]  # validated graders, unique names
    project_id: str = DEFAULT_PROJECT_ID


@dataclass(frozen=True)
class EvalRunRecord(Leased):
    id: str
    eval_id: str
    name: str
    created_at: float
    metadata: dict | None
    model: str | None
    data_source: dict
    status: str
    requested_action: str | None
    error: dict | None
    total_items: int | None
    result_counts: dict
    per_testing_criteria_results: list[dict]
    per_model_usage: list[dict]
    job_id: str | None = None
    job_label: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    project_id: str = DEFAULT_PROJECT_ID  # always its eval's


@dataclass(frozen=True)
class OutputItemRecord:
    id: str
    run_id: str
    eval_id: str
    created_at: float
    datasource_item_id: int
    status: str
    datasource_item: dict
    results: list[dict]
    sample: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewRun:
    eval_id: str
    name: str
    data_source: dict
    model: str | None = None
    metadata: dict | None = None
    job_id: str | None = None
    job_label: str | None = None


_JSON = {"metadata", "data_source_config", "testing_criteria", "data_source", "error", "result_counts",
         "per_testing_criteria_results", "per_model_usage", "datasource_item", "results", "sample"}


def record(cls, row: sqlite3.Row):
    """A record from a row, JSON columns decoded, unknown columns dropped."""
    names = cls.__dataclass_fields__
    return cls(**{k: (json.loads(row[k]) if k in _JSON and row[k] is not None else row[k])
                  for k in row.keys() if k in names})


class EvalRepo:
    def __init__(self, db: Database, clock=time.time):
        self.db = db
        self.clock = clock

    # -- evals ---------------------------------------------------------------------------

    def create(self, name: str, data_source_config: dict, testing_criteria: list[dict],
               metadata: dict | None, project_id: str = DEFAULT_PROJECT_ID) -> EvalRecord:
        eval_id, now = new_id("eval_"), self.clock()
        self.db.execute("INSERT INTO evals (id, name, created_at, updated_at, metadata, data_source_config,"
                        " testing_criteria, project_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (eval_id, name, now, now, to_json(metadata), to_json(data_source_config),
                         to_json(testing_criteria), project_id))
        return self.get(eval_id)

    def get(self, eval_id: str, *, project_id: str | None = None) -> EvalRecord:
        """The eval; with project_id, only if that project owns it (else the NotFoundError of a missing id)."""
        sql, params = in_project("SELECT * FROM evals WHERE id = ?", [eval_id], project_id)
        row = self.db.one(sql, params)
        if row is None:
            raise errors.NotFoundError(f"No such eval: {eval_id}", param="eval_id")
        return record(EvalRecord, row)

    def list(self, *, after: str | None = None, limit: int = 20, order: str = "asc",
             order_by: str = "created_at", project_id: str | None = None) -> Page[EvalRecord]:
        if order_by not in ("created_at", "updated_at"):
            raise errors.InvalidRequestError("order_by must be 'created_at' or 'updated_at'", param="order_by")
        key = "seq" if order_by == "created_at" else "updated_at"
        scope = ([], []) if project_id is None else (["project_id = ?"], [project_id])
        rows, more = _page(self.db, "evals", *scope, after=after, limit=limit, order=order, key=key,
                           cursor_where=scope)
        return Page([record(EvalRecord, r) for r in rows], more)

    def by_metadata(self, key: str, value: str, *, project_id: str | None = None) -> EvalRecord | None:
        """The oldest eval (of project_id, when given) whose metadata[key] == value (e.g. a job's own
        before/after eval)."""
        field_sql, field_param = self.db.json_field("metadata", key)
        sql, params = in_project(f"SELECT * FROM evals WHERE {field_sql} = ?", [field_param, value], project_id)
        row = self.db.one(sql + " ORDER BY seq LIMIT 1", params)
        return None if row is None else record(EvalRecord, row)

    def update(self, eval_id: str, *, name: str | None = None, metadata: dict | None = None,
               set_metadata: bool = False, project_id: str | None = None) -> EvalRecord:
        self.get(eval_id, project_id=project_id)
        fields = {}
        if name is not None:
            fields["name"] = name
        if set_metadata:
            fields["metadata"] = to_json(metadata)
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self.db.execute(f"UPDATE evals SET {sets}, updated_at = ? WHERE id = ?",
                            (*fields.values(), self.clock(), eval_id))
        return self.get(eval_id)

    def delete(self, eval_id: str, *, project_id: str | None = None) -> None:
        """Delete an eval with its runs and their output items. A worker executing one of its runs
        loses its lease (the row is gone) and stops at its next write."""
        self.get(eval_id, project_id=project_id)
        self.db.execute("DELETE FROM evals WHERE id = ?", (eval_id,))

    # -- runs ----------------------------------------------------------------------------

    def create_run(self, new: NewRun) -> EvalRunRecord:
        """A queued run, in its eval's project."""
        run_id, now = new_id("evalrun_"), self.clock()
        self.db.execute(
            "INSERT INTO eval_runs (id, eval_id, name, created_at, metadata, model, data_source, status,"
            " result_counts, per_testing_criteria_results, per_model_usage, job_id, job_label, updated_at, project_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, '[]', '[]', ?, ?, ?,"
            " (SELECT project_id FROM evals WHERE id = ?))",
            (run_id, new.eval_id, new.name, now, to_json(new.metadata), new.model, to_json(new.data_source),
             to_json(EMPTY_COUNTS), new.job_id, new.job_label, now, new.eval_id))
        return self.get_run(new.eval_id, run_id)

    def get_run(self, eval_id: str, run_id: str, *, project_id: str | None = None) -> EvalRunRecord:
        """The run of that eval; with project_id, only if that project owns them (a run of another
        project's eval gets the eval's NotFoundError, as a missing eval does)."""
        sql, params = in_project("SELECT * FROM eval_runs WHERE id = ? AND eval_id = ?", [run_id, eval_id],
                                 project_id)
        row = self.db.one(sql, params)
        if row is None:
            self.get(eval_id, project_id=project_id)
            raise errors.NotFoundError(f"No such run {run_id} in eval {eval_id}", param="run_id")
        return record(EvalRunRecord, row)

    def run_by_id(self, run_id: str) -> EvalRunRecord:
        row = self.db.one("SELECT * FROM eval_runs WHERE id = ?", (run_id,))
        if row is None:
            raise errors.NotFoundError(f"No such eval run: {run_id}", param="run_id")
        return record(EvalRunRecord, row)

    def list_runs(self, eval_id: str, *, after: str | None = None, limit: int = 20, order: str = "asc",
                  status: str | None = None, project_id: str | None = None) -> Page[EvalRunRecord]:
        self.get(eval_id, project_id=project_id)
        where, params = ["eval_id = ?"], [eval_id]
        if status is not None:
            if status not in RUN_STATUSES:
                raise errors.InvalidRequestError(f"status must be one of {', '.join(RUN_STATUSES)}",
                                                 param="status")
            where.append("status = ?")
            params.append(status)
        rows, more = _page(self.db, "eval_runs", where, params, after=after, limit=limit, order=order,
                           cursor_where=(["eval_id = ?"], [eval_id]))
        return Page([record(EvalRunRecord, r) for r in rows], more)

    def runs_for_job(self, job_id: str) -> list[EvalRunRecord]:
        rows = self.db.all("SELECT * FROM eval_runs WHERE job_id = ? ORDER BY seq", (job_id,))
        return [record(EvalRunRecord, r) for r in rows]

    def cancel_run(self, eval_id: str, run_id: str, *, project_id: str | None = None) -> EvalRunRecord:
        self.get_run(eval_id, run_id, project_id=project_id)  # the NotFoundError a missing eval or run gets
        with self.db.transaction() as c:
            row = c.execute("SELECT * FROM eval_runs WHERE id = ? AND eval_id = ?" + self.db.row_lock,
                            (run_id, eval_id)).fetchone()
            if row is None:
                raise errors.NotFoundError(f"No such run {run_id} in eval {eval_id}", param="run_id")
            run = record(EvalRunRecord, row)
            now = self.clock()
            if run.status in RUN_TERMINAL:
                raise errors.ConflictError(f"Run {run_id} is already {run.status}; it cannot be canceled",
                                           param="run_id")
            if run.lease_live(now):
                c.execute("UPDATE eval_runs SET requested_action = 'cancel', updated_at = ? WHERE id = ?",
                          (now, run_id))
            else:
                c.execute("UPDATE eval_runs SET status = 'canceled', requested_action = NULL, lease_owner = NULL,"
                          " lease_expires_at = NULL, lease_token = lease_token + 1, finished_at = ?,"
                          " updated_at = ? WHERE id = ?", (now, now, run_id))
                webhooks.eval_run_finished(c, run_id, "canceled", now)  # as a worker's finish would
        return self.get_run(eval_id, run_id)

    def delete_run(self, eval_id: str, run_id: str, *, project_id: str | None = None) -> None:
        self.get_run(eval_id, run_id, project_id=project_id)
        self.db.execute("DELETE FROM eval_runs WHERE id = ?", (run_id,))

    # -- output items --------------------------------------------------------------------

    def list_items(self, eval_id: str, run_id: str, *, after: str | None = None, limit: int = 20,
                   order: str = "asc", status: str | None = None,
                   project_id: str | None = None) -> Page[OutputItemRecord]:
        self.get_run(eval_id, run_id, project_id=project_id)
        where, params = ["run_id = ?"], [run_id]
        if status == "pass":
            where.append("status = 'pass'")
        elif status == "fail":  # an item that errored did not pass either
            where.append("status IN ('fail', 'error')")
        elif status is not None:
            raise errors.InvalidRequestError("status must be 'pass' or 'fail'", param="status")
        rows, more = _page(self.db, "eval_output_items", where, params, after=after, limit=limit, order=order,
                           cursor_where=(["run_id = ?"], [run_id]))
        return Page([record(OutputItemRecord, r) for r in rows], more)

    def get_item(self, eval_id: str, run_id: str, item_id: str, *, project_id: str | None = None) -> OutputItemRecord:
        self.get_run(eval_id, run_id, project_id=project_id)  # the run must be this eval's (and project's)
        row = self.db.one("SELECT * FROM eval_output_items WHERE id = ? AND run_id = ?", (item_id, run_id))
        if row is None:
            raise errors.NotFoundError(f"No such output item {item_id} in run {run_id}", param="output_item_id")
        return record(OutputItemRecord, row)

    def all_items(self, run_id: str) -> list[OutputItemRecord]:
        rows = self.db.all("SELECT * FROM eval_output_items WHERE run_id = ? ORDER BY datasource_item_id",
                           (run_id,))
        return [record(OutputItemRecord, r) for r in rows]


def _page(db: Database, table: str, where: list[str], params: list, *, after: str | None, limit: int,
          order: str, key: str = "seq", cursor_where: tuple[list[str], list] = ([], [])) -> tuple[list, bool]:
    """OpenAI cursor pagination over `table` ordered by `key` (ties broken by seq); `after` is the
    id of the last object already seen, which must meet cursor_where too (the same eval, run or
    project), so a cursor naming a row the caller may not see is refused like an unknown one."""
    if order not in ("asc", "desc"):
        raise errors.InvalidRequestError("order must be 'asc' or 'desc'", param="order")
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequestError(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    where, params = list(where), list(params)
    op = "<" if order == "desc" else ">"
    if after:
        row = db.one(f"SELECT seq, {key} AS k FROM {table} WHERE " + " AND ".join(["id = ?", *cursor_where[0]]),
                     (after, *cursor_where[1]))
        if row is None:
            raise errors.InvalidRequestError(f"No object with id {after!r} to page after", param="after",
                                             code="invalid_cursor")
        if key == "seq":
            where.append(f"seq {op} ?")
            params.append(row["seq"])
        else:
            where.append(f"({key} {op} ? OR ({key} = ? AND seq {op} ?))")
            params += [row["k"], row["k"], row["seq"]]
    sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
    direction = "DESC" if order == "desc" else "ASC"
    order_sql = f"seq {direction}" if key == "seq" else f"{key} {direction}, seq {direction}"
    rows = db.all(f"{sql} ORDER BY {order_sql} LIMIT ?", (*params, limit + 1))
    return rows[:limit], len(rows) > limit
