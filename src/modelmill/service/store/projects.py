"""Projects (the unit of tenancy) and checkpoint permissions (a project's model shared with another).

Every API key belongs to one project, and a request acts in its key's project: it sees and changes
only that project's files, jobs, models, evals and runs. The default project (DEFAULT_PROJECT_ID)
holds everything made before projects existed, keys created without --project, and keyless
loopback requests.

A checkpoint permission lets one other project use a fine-tuned model or checkpoint (by its exact
name): sample it, evaluate it, train on top of it, and see it in its model list. Only the owning
project (the job's) lists, creates and deletes a model's permissions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from modelmill import errors
from modelmill.service.store.ids import new_id
from modelmill.service.store.db import Database
from modelmill.service.store.records import DEFAULT_PROJECT_ID, Page, from_row

DEFAULT_PROJECT_NAME = "default"
MAX_PROJECT_NAME = 64
# Characters a project name may use (it is typed on the command line and shown in listings).
PROJECT_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class ProjectRecord:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class PermissionRecord:
    id: str
    model: str  # the shared fine-tuned model or checkpoint name
    job_id: str  # the job that produced it (its project owns the permission)
    project_id: str  # the project it is shared with
    created_at: float


class ProjectRepo:
    def __init__(self, db: Database):
        self.db = db

    def ensure(self, name: str) -> ProjectRecord:
        """The project called `name`, created if there is none."""
        if not name or len(name) > MAX_PROJECT_NAME or not set(name) <= PROJECT_NAME_CHARS:
            raise errors.InvalidRequestError(
                f"A project name is 1 to {MAX_PROJECT_NAME} letters, digits, '-', '_' or '.'; got {name!r}",
                param="project")
        with self.db.transaction() as c:
            # ON CONFLICT: two processes ensuring one name at once both get the one row (Postgres does
            # not serialise transactions the way SQLite's write lock does).
            c.execute("INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                      (new_id("proj_"), name, time.time()))
            row = c.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
        return from_row(ProjectRecord, row)

    def get(self, project_id: str) -> ProjectRecord | None:
        row = self.db.one("SELECT * FROM projects WHERE id = ?", (project_id,))
        return None if row is None else from_row(ProjectRecord, row)

    def list(self) -> list[ProjectRecord]:
        return [from_row(ProjectRecord, r) for r in self.db.all("SELECT * FROM projects ORDER BY seq")]


class PermissionRepo:
    def __init__(self, db: Database):
        self.db = db

    def grant(self, model: str, job_id: str, project_ids: list[str]) -> list[PermissionRecord]:
        """One permission per project (an existing one is returned as it is), in the order asked."""
        out = []
        with self.db.transaction() as c:
            for project_id in project_ids:
                c.execute("INSERT INTO checkpoint_permissions (id, model, job_id, project_id, created_at)"
                          " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, project_id) DO NOTHING",
                          (new_id("cp_"), model, job_id, project_id, time.time()))
                row = c.execute("SELECT * FROM checkpoint_permissions WHERE model = ? AND project_id = ?",
                                (model, project_id)).fetchone()
                out.append(from_row(PermissionRecord, row))
        return out

    def list(self, model: str, *, project_id: str | None = None, after: str | None = None, limit: int = 10,
             descending: bool = True) -> Page[PermissionRecord]:
        from modelmill.service.store.pagination import page_rows

        where, params = ["model = ?"], [model]
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        rows, more = page_rows(self.db, "checkpoint_permissions", where, params, after=after, limit=limit,
                               descending=descending, cursor_where=(["model = ?"], [model]))
        return Page([from_row(PermissionRecord, r) for r in rows], more)

    def delete(self, model: str, permission_id: str) -> PermissionRecord:
        row = self.db.one("SELECT * FROM checkpoint_permissions WHERE id = ? AND model = ?", (permission_id, model))
        if row is None:
            raise errors.NotFoundError(f"No such checkpoint permission: {permission_id}", param="permission_id")
        self.db.execute("DELETE FROM checkpoint_permissions WHERE id = ?", (permission_id,))
        return from_row(PermissionRecord, row)

    def allows(self, model: str, project_id: str) -> bool:
        return self.db.one("SELECT 1 FROM checkpoint_permissions WHERE model = ? AND project_id = ?",
                           (model, project_id)) is not None

    def shared_with(self, project_id: str) -> set[str]:
        """Names of the models shared with `project_id`."""
        return {r["model"] for r in self.db.all("SELECT model FROM checkpoint_permissions WHERE project_id = ?",
                                                (project_id,))}


__all__ = ["DEFAULT_PROJECT_ID", "DEFAULT_PROJECT_NAME", "ProjectRecord", "PermissionRecord", "ProjectRepo",
           "PermissionRepo"]
