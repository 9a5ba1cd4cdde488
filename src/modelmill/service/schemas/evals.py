"""Wire models for /v1/evals (OpenAI's Eval, EvalList, EvalRun, EvalRunList, EvalRunOutputItem,
EvalRunOutputItemList and the delete responses).

Request bodies stay dicts: service/evals/requests.py is the one checker of their shapes, so a
bad field is reported by its path (e.g. `testing_criteria[1].operation`) the way graders are.
`error` is null when there is none, as OpenAI's own examples show (its schema types it as an
object only).
"""

from __future__ import annotations

from typing import Any, Literal

from modelmill.service.schemas.common import CursorList, Deletion, WireModel, unix
from modelmill.service.store.evals import EvalRecord, EvalRunRecord, OutputItemRecord

# OpenAI's sample schema, added to an eval's data_source_config.schema with include_sample_schema.
SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "message": {"type": "object", "properties": {"role": {"type": "string", "enum": ["assistant"]},
                                                          "content": {"type": ["string", "null"]},
                                                          "refusal": {"type": ["string", "null"]}},
                        "required": ["role"]},
            "finish_reason": {"type": "string"}}, "required": ["message", "finish_reason"]}},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["model", "choices"],
}


class EvalObject(WireModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, ev: EvalRecord) -> "EvalObject":
        config = ev.data_source_config
        schema = {"type": "object", "properties": {"item": config["item_schema"]}, "required": ["item"]}
        if config.get("include_sample_schema"):
            schema["properties"]["sample"] = SAMPLE_SCHEMA
            schema["required"].append("sample")
        shown = {"type": config.get("type", "custom"), "schema": schema}
        if shown["type"] != "custom":  # stored_completions / logs: echo their metadata filter
            shown["metadata"] = config.get("metadata")
        return cls(id=ev.id, name=ev.name, data_source_config=shown,
                   testing_criteria=ev.testing_criteria, created_at=unix(ev.created_at), metadata=ev.metadata)


class EvalList(CursorList[EvalObject]):
    pass


class EvalDeleted(Deletion):
    object: Literal["eval.deleted"] = "eval.deleted"
    eval_id: str


class EvalRunObject(WireModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: str
    model: str
    name: str
    created_at: int
    report_url: str
    result_counts: dict[str, int]
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: dict[str, str] | None

    @classmethod
    def of(cls, run: EvalRunRecord, base_url: str) -> "EvalRunObject":
        return cls(id=run.id, eval_id=run.eval_id, status=run.status, model=run.model or "", name=run.name,
                   created_at=unix(run.created_at), report_url=report_url(base_url, run.eval_id, run.id),
                   result_counts=run.result_counts, per_model_usage=run.per_model_usage,
                   per_testing_criteria_results=run.per_testing_criteria_results, data_source=run.data_source,
                   metadata=run.metadata, error=run.error)


class EvalRunList(CursorList[EvalRunObject]):
    pass


class EvalRunDeleted(Deletion):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    run_id: str


class OutputItemObject(WireModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]

    @classmethod
    def of(cls, it: OutputItemRecord) -> "OutputItemObject":
        return cls(id=it.id, run_id=it.run_id, eval_id=it.eval_id, created_at=unix(it.created_at), status=it.status,
                   datasource_item_id=it.datasource_item_id, datasource_item=it.datasource_item, results=it.results,
                   sample=it.sample)


class OutputItemList(CursorList[OutputItemObject]):
    pass


def report_url(base_url: str, eval_id: str, run_id: str) -> str:
    """The run's HTML report on this server (outside /v1)."""
    return f"{base_url.rstrip('/')}/evals/{eval_id}/runs/{run_id}"
