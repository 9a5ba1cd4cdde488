"""Wire models for /v1/fine_tuning/alpha/graders/{run,validate} (OpenAI's RunGraderRequest,
RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse).

Graders are described by the discriminated union (on `type`) of the grader types' own wire models
(ml/graders/registry.py: each type registers its model beside its grade and validate), so
/openapi.json documents every grader shape. They are *checked* by ml.graders.validate_grader, the
one checker of grader shapes: its 400s name the exact field (`grader.graders.a.operation`,
`grader.input[0].content`) with the messages docs/graders-evals.md shows, where pydantic's would
read differently. So a grader field is validated as a JSON object here and handed to that checker
(service/graders/requests.py, evals/requests.py); GraderObject / TopLevelGrader change what the schema says.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from modelmill.ml import graders as ml_graders
from modelmill.service.schemas.common import OpenAIRequest, WireModel


def described_as(described: Any) -> Any:
    """A field validated as a JSON object (dict[str, Any]: a non-object is still "Input should be a
    valid dictionary") and described in the request's JSON schema as `described`, through
    pydantic's json_schema_input_type (the input a validator accepts, documented)."""
    return Annotated[dict[str, Any], BeforeValidator(_unchanged, json_schema_input_type=described)]


def _unchanged(value: Any) -> Any:
    return value


# Any grader type (evals' testing_criteria, multi's sub-graders).
GraderObject = described_as(ml_graders.wire_union())
# The top level of graders/run, graders/validate and an RFT job: OpenAI allows label_model only inside
# a multi grader there (service/graders/requests.py).
TopLevelGrader = described_as(ml_graders.wire_union(exclude=("label_model",)))


class ValidateGraderRequest(OpenAIRequest):
    grader: TopLevelGrader


class RunGraderRequest(OpenAIRequest):
    grader: TopLevelGrader
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
    grader: TopLevelGrader
