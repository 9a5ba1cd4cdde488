"""The Batch API: create (with the input file checked line by line), cancel, and finalize (the
output and error files). The worker's side, answering the lines, is service/batches/runner.py.

Create checks everything before anything runs: the request's fields (a 400 naming the field) and
then every line of the input file as its endpoint would check it (service/batches/lines.py): a bad
line, a url that is not the batch's endpoint, a model the project can't use, a duplicate
custom_id... The batch is refused with a 400 whose message names each bad line and its field
(param input_file_id), so nothing is queued that would fail line after line. A batch that passes
is recorded `validating` and a worker takes it from there (store/batches.py).
"""

from __future__ import annotations

import json
import logging

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.batches import lines as batch_lines
from modelmill.service.evals.requests import check_metadata
from modelmill.service.schemas.batches import CreateBatchRequest
from modelmill.service.store import Lease, Store
from modelmill.service.store.batches import BatchQueue, BatchRecord, NewBatch

log = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
# OpenAI's CreateBatchRequest endpoints; ModelMill runs batches for batch_lines.ENDPOINTS.
OPENAI_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos")
MAX_REQUESTS = 50_000  # OpenAI's limit on requests in one batch
EXPIRES_AFTER_S = (3600, 2_592_000)  # output_expires_after.seconds bounds (1 hour .. 30 days), OpenAI's
PROBLEMS_QUOTED = 5  # bad lines quoted in the 400's message ("and N more" after)
PROBLEMS_KEPT = 1000  # bad lines collected before validation only counts the rest
OUTPUT_MAX_BYTES = 1 << 40  # no cap of its own on an output file: it is as large as its answers


def _bad(message: str, param: str, code: str = "invalid_value") -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code=code)


# -- create -----------------------------------------------------------------------------------------

def create(store: Store, settings: Settings, body: CreateBatchRequest, *, project_id: str) -> BatchRecord:
    endpoint = _endpoint(body.endpoint)
    if not isinstance(body.completion_window, str) or body.completion_window not in COMPLETION_WINDOWS:
        raise _bad(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}, not "
                   f"{body.completion_window!r}", "completion_window")
    metadata = check_metadata(body.metadata)
    expires_after = _expires_after(body.output_expires_after)
    if not isinstance(body.input_file_id, str) or not body.input_file_id:
        raise _bad("input_file_id must be the id of a file uploaded with purpose 'batch'", "input_file_id")
    f = store.files.get(body.input_file_id, param="input_file_id", project_id=project_id)
    if f.purpose != "batch":
        raise _bad(f"File {f.id} has purpose '{f.purpose}'; a batch's input file must be uploaded with purpose "
                   "'batch'", "input_file_id")
    total, model = validate(store, settings, f.id, endpoint, project_id)
    return store.batches.create(NewBatch(endpoint, f.id, body.completion_window, total,
                                         COMPLETION_WINDOWS[body.completion_window], model, metadata, expires_after),
                                project_id)


def _endpoint(endpoint) -> str:
    if not isinstance(endpoint, str):
        raise _bad("endpoint must be a string, e.g. '/v1/chat/completions'", "endpoint")
    if endpoint in batch_lines.ENDPOINTS:
        return endpoint
    if endpoint in OPENAI_ENDPOINTS:
        raise _bad(f"ModelMill does not run batches for {endpoint}; supported endpoints: "
                   f"{', '.join(batch_lines.ENDPOINTS)}", "endpoint", "unsupported_value")
    raise _bad(f"Invalid endpoint {endpoint!r}; supported endpoints: {', '.join(batch_lines.ENDPOINTS)}", "endpoint")


def _expires_after(raw) -> int | None:
    """OpenAI's BatchFileExpirationAfter {"anchor": "created_at", "seconds"} -> seconds, or None."""
    if raw is None:
        return None
    param = "output_expires_after"
    if not isinstance(raw, dict):
        raise _bad(f"{param} must be an object with anchor and seconds", param)
    errors.reject_unknown_fields(raw, ("anchor", "seconds"), param)
    if raw.get("anchor") != "created_at":
        raise _bad(f"{param}.anchor must be 'created_at'", f"{param}.anchor")
    seconds, (lo, hi) = raw.get("seconds"), EXPIRES_AFTER_S
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not lo <= seconds <= hi:
        raise _bad(f"{param}.seconds must be an integer between {lo} and {hi}", f"{param}.seconds")
    return seconds


def validate(store: Store, settings: Settings, file_id: str, endpoint: str, project_id: str) -> tuple[int, str | None]:
    """(number of requests, the model every line names or None) of a valid input file; otherwise
    a 400 naming each bad line and its field."""
    preparer = batch_lines.Preparer(store, settings, endpoint, project_id)
    seen: dict[str, int] = {}
    models: set[str] = set()
    problems: list[tuple[int, batch_lines.LineError]] = []
    n_bad = total = 0
    for number, text in batch_lines.read_lines(store.files.blob_path(file_id)):
        total += 1
        try:
            line = batch_lines.parse(number, text, endpoint)
            if line.custom_id in seen:
                raise batch_lines.LineError("duplicate_custom_id", f"The custom_id {line.custom_id!r} is a duplicate "
                                            f"of line {seen[line.custom_id]}'s: custom_id must be unique in a batch.",
                                            "custom_id")
            seen[line.custom_id] = number
            models.add(line.body["model"])
            preparer.prepare(line)
        except batch_lines.LineError as e:
            n_bad += 1
            if len(problems) < PROBLEMS_KEPT:
                problems.append((number, e))
    if total == 0:
        raise _bad(f"The input file {file_id} contains no requests", "input_file_id", "empty_file")
    if total > MAX_REQUESTS:
        raise _bad(f"The input file {file_id} has {total} requests; a batch may have at most {MAX_REQUESTS}",
                   "input_file_id", "too_many_requests")
    if problems:
        quoted = "; ".join(f"line {n}: {e.param or 'line'}: {e.message}" for n, e in problems[:PROBLEMS_QUOTED])
        more = n_bad - PROBLEMS_QUOTED
        raise _bad(f"The input file {file_id} has {n_bad} invalid line{'s' if n_bad > 1 else ''}: {quoted}"
                   + (f"; and {more} more" if more > 0 else ""), "input_file_id", problems[0][1].code)
    return total, models.pop() if len(models) == 1 else None


# -- cancel -----------------------------------------------------------------------------------------

def cancel(store: Store, settings: Settings, batch_id: str, *, project_id: str) -> BatchRecord:
    """Mark the batch cancelling. A worker holding it stops within moments and finalizes it; one
    nobody holds is taken over here (a claim on the same queue, so no worker can take it at the
    same time) and finalized at once: `cancelled`, with the partial results in its files."""
    batch = store.batches.request_cancel(batch_id, project_id=project_id)
    queue = store.batch_queue(settings.lease_seconds)
    lease = queue.claim(f"api-cancel:{batch_id}", row_id=batch_id)
    if lease is not None:
        finalize(store, queue, lease, "cancelled")
        batch = store.batches.get(batch_id, project_id=project_id)
    return batch


# -- finalize: the output and error files -------------------------------------------------------------

UNANSWERED = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


def finalize(store: Store, queue: BatchQueue, lease: Lease, outcome: str) -> str:
    """Write the batch's output file (the lines answered with status 200) and error file (the other
    answered lines, and for a cancelled or expired batch every line never run), then set `outcome`
    with the files' ids, in one fenced transaction. A batch the user cancelled while it completed
    ends cancelled. Returns the status it ended in."""
    batch = store.batches.by_id(lease.id)
    if outcome == "completed":
        queue.finalizing(lease)
    output = _write(store, (r for _, r in queue.results(batch.id, True)))
    error_lines = (r for _, r in queue.results(batch.id, False))
    if outcome in UNANSWERED:
        error_lines = _chain(error_lines, _unanswered(store, queue, batch, *UNANSWERED[outcome]))
    error = _write(store, error_lines)
    added = []
    try:
        with queue.fenced(lease) as c:
            if outcome == "completed" and queue.status_in(c, lease) == "cancelling":
                outcome = "cancelled"
            ids = {}
            for key, blob, kind in (("output_file_id", output, "output"), ("error_file_id", error, "error")):
                if blob is not None:
                    added.append(store.files.add(blob, f"batch_{batch.id}_{kind}.jsonl", "batch_output",
                                                 batch.project_id, expires_after_s=batch.output_expires_after))
                    ids[key] = added[-1].id
            queue.finish_in(c, lease, outcome, ids)
    except BaseException:
        for f in added:  # rolled back with the transaction: their blobs go too
            store.files.blob_path(f.id).unlink(missing_ok=True)
        for blob in (output, error):
            if blob is not None:
                blob.discard()
        raise
    return outcome


def fail(store: Store, queue: BatchQueue, lease: Lease, code: str, message: str, param: str | None = None) -> str:
    """End the batch failed, with OpenAI's BatchError in batch.errors (and files for what was answered)."""
    queue.update(lease, errors=[{"code": code, "message": message, "param": param, "line": None}])
    return finalize(store, queue, lease, "failed")


def _write(store: Store, lines):
    """A temp blob holding `lines` as JSONL, or None when there are none."""
    blob = None
    for result in lines:
        if blob is None:
            blob = store.files.writer(OUTPUT_MAX_BYTES)
        blob.write((json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    if blob is not None:
        blob.close()
    return blob


def _chain(*iterables):
    for it in iterables:
        yield from it


def _unanswered(store: Store, queue: BatchQueue, batch: BatchRecord, code: str, message: str):
    """An error line for each input line that has no result (the input file is re-read; one that
    has been deleted since leaves them out)."""
    path = store.files.blob_path(batch.input_file_id)
    if not path.exists():
        return
    answered = queue.answered_lines(batch.id)
    for number, text in batch_lines.read_lines(path):
        if number in answered:
            continue
        try:
            custom_id = json.loads(text)["custom_id"]
        except (ValueError, KeyError, TypeError):
            continue  # checked at create; a line that is not a request has no custom_id to report
        yield batch_lines.unanswered(number, custom_id, code, message)
