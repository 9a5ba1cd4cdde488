"""Data for fine-tuning, made from what a team already has (issue 19).

- `schema`:   check OpenAI tool schemas and sample argument sets from them (enumerate small
              enum/boolean products, sample beyond a budget; bounds, formats, nesting, optionals).
- `synth`:    function schemas -> chat SFT lines with `tools` and an assistant `tool_calls`
              message; requests written by a teacher model or by varied templates.
- `label`:    unlabelled prompts -> SFT lines answered by a teacher (tool calls included),
              optionally filtered / best-of-K by any grader of ml.graders.
- `stored`:   chat completions stored with `store: true` -> SFT lines.
- `importer`: an OpenAI-compatible account's fine-tuning jobs and files -> this server.
- `teacher`:  the one way these talk to a model: the official `openai` SDK, with retries and
              backoff that are counted, a request-keyed cache (reruns resend nothing), token usage.
- `output`:   every line validated (jsonschema + ml.data) and written to a temp file, then renamed.

This package never imports modelmill.service: it talks to servers only over HTTP with the SDK,
so the same code works against OpenAI, vLLM or a ModelMill server.
"""
