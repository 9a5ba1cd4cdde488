"""A batch's input file, line by line: read -> parse -> prepare -> answer.

Each line of the JSONL is OpenAI's BatchRequestInput, {"custom_id", "method": "POST", "url", "body"},
whose body is a request to the batch's endpoint (/v1/chat/completions or /v1/responses). The same
code checks a line when the batch is created (service/batches/requests.validate: every problem names its line
and field, and the batch is refused) and prepares it again on the worker (service/batches/runner.py),
so a line is checked exactly as its endpoint checks a request: the same wire model (unknown fields
refused), the same limits, the same model resolution for the batch's project. Then it is answered
by the same code the endpoint runs (chat.complete, responses_run's response object), and the
answer is written in OpenAI's BatchRequestOutput shape:

    {"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}

A request the endpoint would refuse (400, 404...) is an error-file line with that status and
OpenAI's error body, as OpenAI's batches report them.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.chat import completions as chat
from modelmill.service.chat import params as chat_params
from modelmill.service.models import registry as model_registry
from modelmill.service.responses import requests as responses
from modelmill.service.responses import runner as responses_run
from modelmill.service.chat import stored_completions
from modelmill.service.store.ids import new_id
from modelmill.service.schemas.chat import ChatCompletionRequest
from modelmill.service.schemas.responses import CreateResponseRequest
from modelmill.service.store import Store
from modelmill.service.store.batches import LineResult
from modelmill.service.store.text import clean

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
LINE_FIELDS = ("custom_id", "method", "url", "body")
MAX_CUSTOM_ID_CHARS = 512  # ModelMill's bound (OpenAI documents none): custom_id is echoed in every output line


class LineError(Exception):
    """A line that can not be run; `param` is the field of the line at fault (e.g. "url", "body.model")."""

    def __init__(self, code: str, message: str, param: str | None, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.param, self.status = code, message, param, status

    def batch_error(self, line: int) -> dict:
        """OpenAI's BatchError."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": line}


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line number in the input file
    custom_id: str
    body: dict


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; read as a stream, so a big file is never held whole."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "\ufffd"  # parse() reports it as invalid JSON, naming the line
            if text.strip():
                yield number, text


def parse(number: int, text: str, endpoint: str) -> Line:
    """The line's request; LineError naming the field that is wrong."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise LineError("invalid_json", "This line is not parseable as valid JSON.", None) from None
    if not isinstance(obj, dict):
        raise LineError("invalid_request", "Each line must be a JSON object with custom_id, method, url and body.",
                        None)
    if clean(obj) != obj:  # what the API's edge refuses in a request body (api/text_hygiene.py)
        raise LineError("invalid_value", "The line holds a NUL character or an unpaired UTF-16 surrogate "
                        "(\\u0000, \\ud800...), which ModelMill does not accept in a request.", None)
    unknown = [k for k in obj if k not in LINE_FIELDS]
    if unknown:
        raise LineError("invalid_request", f"Unrecognized field{'s' if len(unknown) > 1 else ''}: "
                        f"{', '.join(map(str, unknown))}", str(unknown[0]))
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_required_parameter", "custom_id must be a non-empty string.", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise LineError("invalid_value", f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters.", "custom_id")
    if obj.get("method") != "POST":
        raise LineError("invalid_method", f"method must be 'POST', not {obj.get('method')!r}.", "method")
    if obj.get("url") != endpoint:
        raise LineError("invalid_url", f"The url {obj.get('url')!r} does not match the batch's endpoint "
                        f"'{endpoint}': every line of a batch must name the batch's endpoint.", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_request", "body must be a JSON object: the request to the endpoint.", "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise LineError("missing_required_parameter", "body.model must name a model.", "body.model")
    if body.get("stream"):
        raise LineError("invalid_value", "stream is not supported in a batch: each answer is written whole to "
                        "the output file.", "body.stream")
    return Line(number, custom_id, body)


# -- preparing: the endpoint's own checks -----------------------------------------------------------

@dataclass
class Prepared:
    """A line ready to answer: its chat request (and, for /v1/responses, the Responses preparation)."""

    line: Line
    served: model_registry.ServedModel
    chat: ChatCompletionRequest
    response: responses.Prepared | None = None


class Preparer:
    """Prepares lines of one batch for its project; models are resolved once per name."""

    def __init__(self, store: Store, settings: Settings, endpoint: str, project_id: str):
        self.store, self.settings, self.endpoint, self.project_id = store, settings, endpoint, project_id
        self._served: dict[str, Any] = {}

    def prepare(self, line: Line) -> Prepared:
        """The line checked as its endpoint checks a request; LineError (param "body.<field>") if not."""
        try:
            if self.endpoint == "/v1/responses":
                return self._response(line)
            return self._chat(line)
        except ValidationError as e:
            raise _validation_error(e, line.body) from None
        except errors.ModelMillError as e:
            param = f"body.{e.param}" if e.param else "body"
            raise LineError(e.code or "invalid_request", e.message, param, e.status) from None

    def _resolve(self, name: str):
        if name not in self._served:
            try:
                self._served[name] = model_registry.resolve(self.store, self.settings, name,
                                                            project_id=self.project_id)
            except errors.ModelMillError as e:
                self._served[name] = e
        served = self._served[name]
        if isinstance(served, Exception):
            raise served
        return served

    def _chat(self, line: Line) -> Prepared:
        req = ChatCompletionRequest.model_validate(line.body)
        chat.check_text_size(req, self.settings)
        chat_params.check(req, self.settings, images_later=True)
        chat.check_token_limits(req, self.settings)
        served = self._resolve(req.model)
        chat_params.check_images(self.settings, served, req)  # as the endpoint: a VLM reads them, else a 400
        chat.sampling_params(req, self.settings)
        return Prepared(line, served, req)

    def _response(self, line: Line) -> Prepared:
        body = CreateResponseRequest.model_validate(line.body)
        self._resolve(body.model)  # cached: responses.prepare resolves it again
        prep = responses.prepare(self.store, self.settings, body, project_id=self.project_id)
        with responses.chat_errors():
            chat.check_text_size(prep.chat, self.settings)
            chat.check_token_limits(prep.chat, self.settings)
            chat.sampling_params(prep.chat, self.settings)
        # generated here through chat.complete (not responses_run.create, which would store it at once):
        # a stored response is kept in the transaction that records the line (see answer)
        return Prepared(line, prep.served, prep.chat, prep)


def _validation_error(e: ValidationError, body: dict) -> LineError:
    """A body the endpoint's wire model refused, named as the endpoint names it (unknown fields first)."""
    errs = e.errors()
    extra = [".".join(str(p) for p in err["loc"]) for err in errs if err.get("type") == "extra_forbidden"]
    if extra:
        return LineError("invalid_request", f"Unrecognized request argument{'s' if len(extra) > 1 else ''} "
                         f"supplied: {', '.join(extra)}", f"body.{extra[0]}")
    first = errs[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-", "literal[")))
    if first.get("type") == "missing":
        return LineError("missing_required_parameter", f"Missing required parameter: '{loc}'.", f"body.{loc}")
    return LineError("invalid_value", f"Invalid value for '{loc}': {first.get('msg')}", f"body.{loc}" if loc else
                     "body")


# -- answering -------------------------------------------------------------------------------------

def answer(prepared: Prepared | LineError, line: Line, sampler, settings: Settings,
           cancel: threading.Event) -> tuple[LineResult, Callable[[Store, str], None] | None]:
    """(the line's result, what to store with it, if the request asked to be stored: a function of
    (store, project_id) run in the transaction that records the result). Never raises for a request
    error: that is the line's error-file entry."""
    if isinstance(prepared, LineError):
        return error_result(line, prepared), None
    try:
        if prepared.response is not None:
            return _answer_response(prepared, sampler, settings, cancel)
        completion = chat.complete(sampler, settings, prepared.served, prepared.chat, cancel=cancel)
        keep = None
        if prepared.chat.store:
            def keep(store: Store, project_id: str, req=prepared.chat, done=completion) -> None:
                stored_completions.save(store, project_id, req, done)
        return _ok(line, completion, completion["usage"]["prompt_tokens"],
                   completion["usage"]["completion_tokens"]), keep
    except errors.ModelMillError as e:
        param = f"body.{e.param}" if e.param else None
        return error_result(line, LineError(e.code or "invalid_request", e.message, param, e.status)), None
    except Exception as e:  # noqa: BLE001 - one line's failure is its own error line, not the batch's
        log.exception("batch line %d failed", line.number)
        return error_result(line, LineError("internal_error", f"The server had an error while processing this "
                                            f"request: {type(e).__name__}", None, 500)), None


def _answer_response(prepared: Prepared, sampler, settings: Settings, cancel: threading.Event):
    prep = prepared.response
    with responses.chat_errors():
        completion = chat.complete(sampler, settings, prep.served, prep.chat, cancel=cancel)
    choice = completion["choices"][0]
    status = "incomplete" if choice["finish_reason"] == "length" else "completed"
    body = responses_run.response_object(prep, status, responses_run.output_of(choice), completion["usage"])
    keep = None
    if prep.store:  # Responses are stored unless store is false
        message = choice["message"]
        turn = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            turn["tool_calls"] = message["tool_calls"]

        def keep(store: Store, project_id: str) -> None:
            store.responses.add(project_id, body, prep.input_items, prep.history + [turn])
    usage = completion["usage"]
    return _ok(prepared.line, body, usage["prompt_tokens"], usage["completion_tokens"]), keep


def _ok(line: Line, body: dict, input_tokens: int, output_tokens: int) -> LineResult:
    result = {"id": new_id("batch_req_"), "custom_id": line.custom_id,
              "response": {"status_code": 200, "request_id": new_id("req_", 32), "body": body}, "error": None}
    return LineResult(line.number, line.custom_id, True, result, int(input_tokens), int(output_tokens))


def error_result(line: Line, e: LineError) -> LineResult:
    """The error-file line of a request the endpoint refused (its status and OpenAI's error body)."""
    body = {"error": {"message": e.message, "type": "invalid_request_error" if e.status < 500 else "server_error",
                      "param": e.param, "code": e.code}}
    result = {"id": new_id("batch_req_"), "custom_id": line.custom_id,
              "response": {"status_code": e.status, "request_id": new_id("req_", 32), "body": body}, "error": None}
    return LineResult(line.number, line.custom_id, False, result)


def unanswered(number: int, custom_id: str, code: str, message: str) -> dict:
    """The error-file line of a request that was never run (the batch was cancelled or expired)."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}
