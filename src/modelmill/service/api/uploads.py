"""Streaming multipart upload with a size cap that holds while the body arrives.

Starlette's request.form() spools a whole file before we could check its size, so the
body is parsed here with python-multipart's streaming parser and written straight into a
temp blob that refuses to grow past settings.max_upload_bytes. Content-Length, when
sent, lets an oversized upload be refused before anything is written; without it (chunked
transfer) the byte count is what stops it. Either way nothing is kept on disk.

After refusing, the rest of the body is read and dropped (up to DRAIN_LIMIT_BYTES) so the
client, which is still sending, gets the 413 instead of a reset connection. A client that
disconnects mid-body, or stalls for UPLOAD_IDLE_SECONDS, has its temp blob removed at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from modelmill import errors
from modelmill.service.store.files import BlobWriter, FileRepo, too_large

MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (purpose, expires_after...)
FORM_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and small fields around the file
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024  # most bytes read and dropped after a 413 before giving up
UPLOAD_IDLE_SECONDS = 60.0  # an upload sending nothing for this long is abandoned, its temp file removed


@dataclass
class Upload:
    blob: BlobWriter | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


class _Parts:
    """python-multipart callbacks: the `file` part (`field`) streams into a BlobWriter, others into fields."""

    def __init__(self, files: FileRepo, max_bytes: int, field: str = "file"):
        self.files, self.max_bytes, self.field = files, max_bytes, field
        self.upload = Upload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._field = bytearray()
        self._to_blob = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self):
        self._headers, self._name, self._field, self._to_blob = {}, None, bytearray(), False

    def header_field(self, data, start, end):
        self._header_field += data[start:end]

    def header_value(self, data, start, end):
        self._header_value += data[start:end]

    def header_end(self):
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def headers_finished(self):
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.field:
            if self.upload.blob is not None:
                raise errors.InvalidRequestError(f"Send exactly one '{self.field}' part", param=self.field)
            self.upload.filename = params.get(b"filename", b"file").decode("utf-8", "replace")
            if "\x00" in self.upload.filename:  # the edge's text rule (api/text_hygiene.py), where it can't look
                raise errors.InvalidRequestError(f"Invalid value for '{self.field}': its filename contains a NUL "
                                                 "character", param=self.field, code="invalid_text")
            self.upload.blob = self.files.writer(self.max_bytes, self.field)
            self._to_blob = True

    def part_data(self, data, start, end):
        if self._to_blob:
            self.upload.blob.write(data[start:end])  # raises PayloadTooLargeError past the cap
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise errors.InvalidRequestError(f"Form field '{self._name}' is too long", param=self._name)

    def part_end(self):
        if not self._to_blob and self._name:
            self.upload.fields[self._name] = self._field.decode("utf-8", "replace")
        self._to_blob = False


async def receive_upload(request: Request, files: FileRepo, max_bytes: int, field: str = "file") -> Upload:
    """Parse a multipart/form-data body; the `field` part ("file"; an upload part's "data") lands in a
    temp blob (caller commits or discards)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        await drain(request)
        wanted = "Upload a file as multipart/form-data with a 'file' part and a 'purpose' field" if field == "file" \
            else f"Send the part as multipart/form-data with a '{field}' part"
        raise errors.InvalidRequestError(wanted, param=field, code="invalid_content_type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        await drain(request)
        raise too_large(max_bytes, field)
    parts = _Parts(files, max_bytes, field)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    stream = request.stream()
    try:
        async for chunk in _until_idle(stream):
            parser.write(chunk)
        parser.finalize()
    except TimeoutError:  # a stalled client (no FIN ever came): give its temp file back now
        _discard(parts.upload)
        raise errors.InvalidRequestError(f"The upload sent nothing for {UPLOAD_IDLE_SECONDS:.0f} s and was "
                                         "abandoned", param=field, code="upload_stalled") from None
    except errors.ModelMillError:
        _discard(parts.upload)
        await _drain_iter(stream)
        raise
    except MultipartParseError as e:
        _discard(parts.upload)
        await _drain_iter(stream)
        raise errors.InvalidRequestError(f"Malformed multipart body: {e}", param=field,
                                         code="invalid_multipart") from None
    except ClientDisconnect:
        _discard(parts.upload)
        raise errors.InvalidRequestError("The client disconnected during the upload", param=field) from None
    except BaseException:
        _discard(parts.upload)
        raise
    if parts.upload.blob is not None:
        parts.upload.blob.close()
    return parts.upload


async def _until_idle(stream):
    """The body's chunks; TimeoutError when none comes for UPLOAD_IDLE_SECONDS. A client that goes
    away is seen at once (ClientDisconnect); this is for one that stalls with its connection open."""
    chunks = stream.__aiter__()
    while True:
        try:
            with anyio.fail_after(UPLOAD_IDLE_SECONDS):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        yield chunk


def _discard(upload: Upload) -> None:
    if upload.blob is not None:
        upload.blob.discard()


async def drain(request: Request) -> None:
    """Read and drop the body (up to DRAIN_LIMIT_BYTES), so a client still sending gets the error that
    follows instead of a reset connection."""
    await _drain_iter(request.stream())



async def _drain_iter(stream) -> None:
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > DRAIN_LIMIT_BYTES:
                return
    except (ClientDisconnect, RuntimeError):
        return
