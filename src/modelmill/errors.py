"""One exception tree. Each class also subclasses the builtin it stands for, so callers
outside the service can catch ValueError / LookupError as usual. The API turns any
ModelMillError into OpenAI's envelope {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations


class ModelMillError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(ModelMillError, ValueError):
    status = 400
    type = "invalid_request_error"


class DataValidationError(InvalidRequestError):
    """A training file failed validation. `problems` holds every LineProblem found."""

    code = "invalid_training_file"

    def __init__(self, message: str, problems: list | None = None, *, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.problems = list(problems or [])


class NotFoundError(ModelMillError, LookupError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class AuthenticationError(ModelMillError, PermissionError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ConflictError(ModelMillError, RuntimeError):
    """The request is valid but the object's state forbids it (e.g. cancel a finished job)."""

    status = 409
    type = "invalid_request_error"
    code = "invalid_state"


class PayloadTooLargeError(ModelMillError, ValueError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class RateLimitError(ModelMillError, RuntimeError):
    """Too many requests of one kind for the project right now (429, OpenAI's rate-limit shape).
    retry_after: seconds the client should wait, sent as the Retry-After header."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class RequestCancelledError(ModelMillError, RuntimeError):
    """The work was dropped because its caller went away (an HTTP client disconnected) before it
    ran. 499 is nginx's "client closed request": there is normally nobody left to read it."""

    status = 499
    type = "invalid_request_error"
    code = "request_cancelled"


class FencedOutError(ModelMillError, RuntimeError):
    """A worker wrote to a job whose lease it no longer holds; the write was refused."""

    status = 409
    type = "server_error"
    code = "lease_lost"


class TrainingError(ModelMillError, RuntimeError):
    status = 500
    type = "server_error"
    code = "training_error"


class GraderFailedError(TrainingError):
    """Reinforcement fine-tuning: the grader failed (some error flag set) on more than the allowed
    share of a step's samples, or on (nearly) every base-model sample before training. The message
    quotes one failing sample and its error flags and details."""

    code = "grader_error"


class ToolFailedError(TrainingError):
    """Agentic RFT: more than half of one step's rollouts had a tool call fail (error, timeout, crash).
    The message quotes one failure (ml/rft/multiturn.py)."""

    code = "tool_error"


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
