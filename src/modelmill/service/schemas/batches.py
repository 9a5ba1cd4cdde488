"""Wire models for /v1/batches (OpenAI's CreateBatchRequest, Batch, BatchRequestCounts, BatchError,
ListBatchesResponse).

Like OpenAI's own examples, a batch object carries every field, null when there is nothing to
report yet (errors, output_file_id, the *_at stamps); `model` and `usage` are left out until known.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelmill.service.schemas.common import CursorList, OpenAIRequest, WireModel, unix
from modelmill.service.store.batches import BatchRecord


class CreateBatchRequest(OpenAIRequest):
    """Values are checked by service/batches/requests.py, so each bad one is a 400 naming its field."""

    input_file_id: Any = Field(...)
    endpoint: Any = Field(...)
    completion_window: Any = Field(...)
    metadata: Any = None
    output_expires_after: Any = None


class BatchRequestCounts(WireModel):
    total: int
    completed: int
    failed: int


class BatchObject(WireModel):
    omit_if_none = frozenset({"model", "usage"})

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: dict[str, Any] | None = None
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, b: BatchRecord) -> "BatchObject":
        answered = b.completed + b.failed
        usage = None if not answered else {
            "input_tokens": b.input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": b.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": b.input_tokens + b.output_tokens}
        return cls(id=b.id, endpoint=b.endpoint, model=b.model,
                   errors={"object": "list", "data": b.errors} if b.errors else None,
                   input_file_id=b.input_file_id, completion_window=b.completion_window, status=b.status,
                   output_file_id=b.output_file_id, error_file_id=b.error_file_id, created_at=unix(b.created_at),
                   in_progress_at=unix(b.in_progress_at), expires_at=unix(b.expires_at),
                   finalizing_at=unix(b.finalizing_at), completed_at=unix(b.completed_at),
                   failed_at=unix(b.failed_at), expired_at=unix(b.expired_at), cancelling_at=unix(b.cancelling_at),
                   cancelled_at=unix(b.cancelled_at),
                   request_counts=BatchRequestCounts(total=b.total, completed=b.completed, failed=b.failed),
                   usage=usage, metadata=b.metadata)


class BatchList(CursorList[BatchObject]):
    pass
