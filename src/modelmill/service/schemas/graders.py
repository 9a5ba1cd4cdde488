"""Wire models for /v1/fine_tuning/alpha/graders/{run,validate} (OpenAI's RunGraderRequest,
RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse).

The grader object itself stays a dict here: ml.graders.validate_grader is the one checker of
grader shapes (it names the bad field, e.g. `grader.graders.a.operation`), so the wire layer
does not keep a second copy of those rules.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from modelmill.service.schemas.common import OpenAIRequest, WireModel


class ValidateGraderRequest(OpenAIRequest):
    grader: dict[str, Any]


class RunGraderRequest(OpenAIRequest):
    grader: dict[str, Any]
    # The text being graded; fills the `sample` namespace (output_json too when it is JSON).
    model_sample: str
    # The dataset item; fills the `item` namespace. Missing means {}.
    item: dict[str, Any] | None = None


class GraderErrors(WireModel):
    """Every flag OpenAI reports, always all present."""

    formula_parse_error: bool
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool
    invalid_variable_error: bool
    other_error: bool
    python_grader_server_error: bool
    python_grader_server_error_type: str | None
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str | None
    model_grader_server_error: bool
    model_grader_refusal_error: bool
    model_grader_parse_error: bool
    model_grader_server_error_details: str | None


class RunGraderMetadata(WireModel):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float  # seconds
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunGraderResponse(WireModel):
    reward: float
    metadata: RunGraderMetadata
    sub_rewards: dict[str, Any] = Field(default_factory=dict)
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)


class ValidateGraderResponse(WireModel):
    grader: dict[str, Any]
