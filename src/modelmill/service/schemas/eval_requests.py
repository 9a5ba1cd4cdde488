"""Wire models of the /v1/evals request bodies: OpenAI's CreateEvalRequest, UpdateEvalRequest and
CreateEvalRunRequest, with their unions (data_source_config, run data_source, its source and its
input_messages) discriminated on `type`.

They are the one declaration of each shape's fields: service/evals/requests.py refuses a field the
shape's model does not have (fields_of), and /openapi.json describes the bodies with them. The
values are checked by service/evals/requests.py, field by field, because those checks need the store
and the eval (files, models, the item schema) and their 400s name the exact field with messages the
API documents (`testing_criteria[1].operation`, `data_source.source.content[3].item.label`); so the
routes take each body as a JSON object described as its model (schemas/graders.py, described_as).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, RootModel

from modelmill.service.schemas.common import OpenAIRequest
from modelmill.service.schemas.graders import GraderObject, described_as

# OpenAI's Metadata: at most 16 pairs, keys <= 64 and values <= 512 characters.
Metadata = Annotated[dict[str, str], Field(max_length=16)]


def fields_of(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields a request object of this shape may have."""
    return tuple(model.model_fields)


# -- create / update an eval ------------------------------------------------------------------------

class CustomDataSourceConfig(OpenAIRequest):
    type: Literal["custom"]
    item_schema: dict[str, Any]  # a JSON schema every item of every run must match
    include_sample_schema: bool = False  # whether graders may use the `sample` namespace


class StoredCompletionsDataSourceConfig(OpenAIRequest):
    """Items are the project's stored chat completions (evals/stored_sources.py)."""

    type: Literal["stored_completions"]
    metadata: Metadata | None = None


class LogsDataSourceConfig(OpenAIRequest):
    """Items are the project's stored completions and Responses (evals/stored_sources.py)."""

    type: Literal["logs"]
    metadata: Metadata | None = None


DataSourceConfig = Annotated[Union[CustomDataSourceConfig, StoredCompletionsDataSourceConfig,
                                   LogsDataSourceConfig], Field(discriminator="type")]


class CreateEvalRequest(OpenAIRequest):
    name: str | None = None
    data_source_config: DataSourceConfig
    testing_criteria: Annotated[list[GraderObject], Field(min_length=1)]  # graders with unique names
    metadata: Metadata | None = None


class UpdateEvalRequest(OpenAIRequest):
    name: str | None = None
    metadata: Metadata | None = None


# -- a run's data source --------------------------------------------------------------------------------

class FileContentRow(BaseModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None  # a jsonl run grades this; a completions run samples anew


class FileContentSource(OpenAIRequest):
    type: Literal["file_content"]
    content: list[FileContentRow]


class FileIdSource(OpenAIRequest):
    type: Literal["file_id"]
    id: str  # a JSONL file of {item, sample?} lines (or bare items)


class StoredCompletionsSource(OpenAIRequest):
    type: Literal["stored_completions"]
    metadata: Metadata | None = None
    model: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    limit: int | None = None


class ResponsesSource(OpenAIRequest):
    type: Literal["responses"]
    metadata: Metadata | None = None
    model: str | None = None
    instructions_search: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    reasoning_effort: str | None = None  # refused unless unset: ModelMill's models do not reason
    temperature: float | None = None
    top_p: float | None = None
    users: list[str] | None = None
    tools: list[str] | None = None
    limit: int | None = None


JsonlSource = Annotated[Union[FileContentSource, FileIdSource], Field(discriminator="type")]
CompletionsSource = Annotated[Union[FileContentSource, FileIdSource, StoredCompletionsSource],
                              Field(discriminator="type")]
ResponsesRunSource = Annotated[Union[FileContentSource, FileIdSource, ResponsesSource], Field(discriminator="type")]


class TemplateInputMessages(OpenAIRequest):
    type: Literal["template"]
    # role + content (a string or content parts); templates may use the item namespace only
    template: Annotated[list[dict[str, Any]], Field(min_length=1)]


class ItemReferenceInputMessages(OpenAIRequest):
    type: Literal["item_reference"]
    item_reference: str  # e.g. "item.messages"


InputMessages = Annotated[Union[TemplateInputMessages, ItemReferenceInputMessages], Field(discriminator="type")]


class CompletionsSamplingParams(OpenAIRequest):
    temperature: float | None = None
    top_p: float | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: Literal["none"] | None = None
    response_format: dict[str, Any] | None = None  # json_schema / json_object, enforced by a grammar


class JsonlRunDataSource(OpenAIRequest):
    type: Literal["jsonl"]
    source: JsonlSource


class CompletionsRunDataSource(OpenAIRequest):
    type: Literal["completions"]
    source: CompletionsSource
    model: str | None = None  # required unless the source is stored_completions (then: grade what was stored)
    input_messages: InputMessages | None = None
    sampling_params: CompletionsSamplingParams | None = None


class ResponsesRunDataSource(OpenAIRequest):
    type: Literal["responses"]
    source: ResponsesRunSource
    model: str | None = None
    input_messages: InputMessages | None = None
    # Responses-shaped: text.format -> response_format, function tools (evals/stored_sources.py)
    sampling_params: dict[str, Any] | None = None


RunDataSource = Annotated[Union[JsonlRunDataSource, CompletionsRunDataSource, ResponsesRunDataSource],
                          Field(discriminator="type")]


class CreateEvalRunRequest(OpenAIRequest):
    name: str | None = None
    data_source: RunDataSource
    metadata: Metadata | None = None


# The route bodies: JSON objects checked by service/evals/requests.py, described as the models above.
# Root models, because FastAPI keeps only its own metadata of a body parameter's Annotated type (the
# description would be dropped); a route reads the object as `body.root`.
class CreateEvalBody(RootModel[described_as(CreateEvalRequest)]):
    pass


class UpdateEvalBody(RootModel[described_as(UpdateEvalRequest)]):
    pass


class CreateEvalRunBody(RootModel[described_as(CreateEvalRunRequest)]):
    pass
