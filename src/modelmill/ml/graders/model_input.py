"""The wire shapes of a model grader's prompt and sampling: OpenAI's EvalItem messages (content a
string, one content part or a list of parts) and the graders' sampling_params.

These models declare the fields (model_graders.py refuses any other, by hand, so the 400 names the
exact field) and describe score_model / label_model in the service's /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ROLES = ("user", "assistant", "system", "developer")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str  # a template


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str  # a template


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str  # a template
    detail: str | None = None


class InputAudioData(BaseModel):
    data: str  # base64
    format: Literal["mp3", "wav"]


class InputAudio(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudioData


ContentPart = Annotated[Union[InputText, OutputText, InputImage, InputAudio], Field(discriminator="type")]


class InputMessage(_Strict):
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, ContentPart, list[Union[str, ContentPart]]]  # strings are templates
    type: Literal["message"] | None = None


class SamplingParams(_Strict):
    """OpenAI's graders' sampling_params, passed to the judge unchanged."""

    seed: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    max_completions_tokens: Annotated[int, Field(ge=1)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


# The fields each shape may have; any other is refused (model_graders.py).
MESSAGE_FIELDS = tuple(InputMessage.model_fields)
PART_FIELDS = {model.model_fields["type"].annotation.__args__[0]: tuple(model.model_fields)
               for model in (InputText, OutputText, InputImage, InputAudio)}
SAMPLING_FIELDS = tuple(SamplingParams.model_fields)
assert set(InputMessage.model_fields["role"].annotation.__args__) == set(ROLES)
assert set(SamplingParams.model_fields["reasoning_effort"].annotation.__args__[0].__args__) == set(REASONING_EFFORTS)
