"""One exception tree. Each class also subclasses the builtin it stands for, so callers
outside the service can catch ValueError / LookupError as usual. The API turns any
ModelMillError into OpenAI's envelope {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations


class ModelMillError(Exception):
    """The root: a 500 `server_error` unless a subclass says otherwise. A subclass sets its HTTP
    status, OpenAI error type and default code as class keywords:
    `class NotFoundError(ClientError, LookupError, status=404, code="not_found")`."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init_subclass__(cls, *, status: int | None = None, type: str | None = None, code: str | None = None,
                          **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in (("status", status), ("type", type), ("code", code)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientError(ModelMillError, status=400, type="invalid_request_error"):
    """A 4xx: the request can't be served as sent. OpenAI gives all of these the type
    invalid_request_error (rate limits aside); each subclass sets its status and code."""


class InvalidRequestError(ClientError, ValueError):
    """A 400: something in the request is wrong; `param` names the field."""


class DataValidationError(InvalidRequestError, code="invalid_training_file"):
    """A training file failed validation. `problems` holds every LineProblem found."""

    def __init__(self, message: str, problems: list | None = None, *, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.problems = list(problems or [])


class NotFoundError(ClientError, LookupError, status=404, code="not_found"):
    """No such object, or another project's: the two answers are identical (no probing of ids)."""


class AuthenticationError(ClientError, PermissionError, status=401, code="invalid_api_key"):
    """No key, an unknown or revoked key, or an expired login."""


class ConflictError(ClientError, RuntimeError, status=409, code="invalid_state"):
    """The request is valid but the object's state forbids it (e.g. cancel a finished job)."""


class PayloadTooLargeError(ClientError, ValueError, status=413, code="file_too_large"):
    """A body, file or part over its size limit."""


class RateLimitError(ModelMillError, RuntimeError, status=429, type="requests", code="rate_limit_exceeded"):
    """Too many requests of one kind for the project right now (429, OpenAI's rate-limit shape).
    retry_after: seconds the client should wait, sent as the Retry-After header."""

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class RequestCancelledError(ClientError, RuntimeError, status=499, code="request_cancelled"):
    """The work was dropped because its caller went away (an HTTP client disconnected) before it
    ran. 499 is nginx's "client closed request": there is normally nobody left to read it."""


class FencedOutError(ModelMillError, RuntimeError, status=409, code="lease_lost"):
    """A worker wrote to a job whose lease it no longer holds; the write was refused."""


class TrainingError(ModelMillError, RuntimeError, code="training_error"):
    """Training failed for a reason of its own (a server_error, 500)."""


class GraderFailedError(TrainingError, code="grader_error"):
    """Reinforcement fine-tuning: the grader failed (some error flag set) on more than the allowed
    share of a step's samples, or on (nearly) every base-model sample before training. The message
    quotes one failing sample and its error flags and details."""


class ToolFailedError(TrainingError, code="tool_error"):
    """Agentic RFT: more than half of one step's rollouts had a tool call fail (error, timeout, crash).
    The message quotes one failure (ml/rft/multiturn.py)."""


class ConfigurationError(ModelMillError, RuntimeError):
    """A bad setting found at start-up, naming its variable in `param` (e.g. MODELMILL_DATABASE_URL
    naming a database that can't be reached). Nothing has been written when it is raised."""


def unrecognized_arguments(params: list[str]) -> InvalidRequestError:
    """OpenAI's own answer to request fields it does not know: a 400 naming them, `param` the first
    one, code null. Raised by the wire models (service/api/errors.py maps pydantic's extra_forbidden
    here) and by the hand-checked shapes (graders, evals) through reject_unknown_fields."""
    plural = "s" if len(params) > 1 else ""
    return InvalidRequestError(f"Unrecognized request argument{plural} supplied: {', '.join(params)}",
                               param=params[0])


def reject_unknown_fields(obj: dict, allowed, path: str = "") -> None:
    """Raise unrecognized_arguments for the keys of `obj` not in `allowed`; `path` is where obj sits
    in the request ("" at the top), so the param reads e.g. "testing_criteria[0].graders.a.modle"."""
    unknown = [f"{path}.{k}" if path else str(k) for k in obj if k not in allowed]
    if unknown:
        raise unrecognized_arguments(unknown)
