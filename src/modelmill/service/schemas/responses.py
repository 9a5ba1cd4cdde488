"""Wire model of POST /v1/responses (OpenAI's CreateResponse).

Every field of OpenAI's CreateResponse is declared, loosely typed: service/responses/requests.py is the one
checker of their values, so a bad or unsupported one is a 400 naming its path (`input[2].call_id`,
`tools[0].type`, `text.format.schema`) in one place, and nothing is accepted and ignored. A field
that is not OpenAI's is refused by OpenAIRequest.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from modelmill.service.schemas.common import OpenAIRequest


class CreateResponseRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    input: Any = None  # a string, or a list of input items
    instructions: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    text: Any = None
    temperature: Any = None
    top_p: Any = None
    max_output_tokens: Any = None
    store: Any = None
    previous_response_id: Any = None
    metadata: Any = None
    stream: Any = None
    stream_options: Any = None
    user: Any = None
    safety_identifier: Any = None
    prompt_cache_key: Any = None
    # OpenAI's, refused unless unset (or their no-op value): service/responses/requests.py UNSUPPORTED
    background: Any = None
    conversation: Any = None
    include: Any = None
    max_tool_calls: Any = None
    prompt: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None
    reasoning: Any = None
    service_tier: Any = None
    truncation: Any = None
    top_logprobs: Any = None
    moderation: Any = None
    context_management: Any = None
