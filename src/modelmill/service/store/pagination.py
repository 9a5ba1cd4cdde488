"""Cursor pagination the OpenAI way: `after` is the id of the last object already seen."""

from __future__ import annotations

from modelmill import errors
from modelmill.service.store.db import Database

MAX_LIMIT = 10_000


def page_rows(db: Database, table: str, where: list[str], params: list, *, after: str | None,
              limit: int, descending: bool, cursor_where: tuple[list[str], list] = ([], [])) -> tuple[list, bool]:
    """Rows of `table` matching `where`, ordered by insertion (newest first if descending),
    starting after the row whose id is `after`. Returns (rows, has_more).
    cursor_where: conditions the `after` row must meet too (its project), so a cursor naming a row
    the caller may not see is refused exactly like one naming no row."""
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequestError(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    where, params = list(where), list(params)
    if after:
        cw, cp = cursor_where
        row = db.one(f"SELECT seq FROM {table} WHERE " + " AND ".join(["id = ?", *cw]), (after, *cp))
        if row is None:
            raise errors.InvalidRequestError(f"No object with id {after!r} to page after", param="after",
                                             code="invalid_cursor")
        where.append("seq < ?" if descending else "seq > ?")
        params.append(row["seq"])
    sql = f"SELECT * FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT ?"
    rows = db.all(sql, (*params, limit + 1))
    return rows[:limit], len(rows) > limit
