"""Supervised fine-tuning (SFT) with LoRA: TRL's SFTTrainer + PEFT, reporting through a Reporter.

The story of one run (`train_sft`):
1. Read the training (and validation) file through ml.data and tokenize every conversation
   with the model's chat template (chat_format). Labels are the token ids of assistant turns and -100
   everywhere else (see `tokenize_example`). The limit, precision and checkpointing come from
   ml/memory.plan_memory (trainer_common.plan_run): an example over max_seq_len fails the run
   (DataValidationError naming its line) unless config.truncation, which cuts it.
2. Build an SFTTrainer on the pre-tokenized dataset, with a fresh LoRA adapter (or the
   `init_adapter` of an earlier fine-tune, to continue training it). Batching is chosen per run
   (`padding_free_cost_ratio`): padding-free batches when they compute less than padded ones.
3. Resume from the newest complete checkpoint under output_dir/checkpoints, if any.
4. Train. `_ReporterHooks` (a TrainerCallback) turns the trainer's logs into reporter.on_step metrics, runs the
   validation evaluations, polls reporter.should_stop() every step, and moves each checkpoint
   into place atomically.
5. Save the final adapter to output_dir/adapter (atomically).

Why pre-tokenize instead of handing TRL a "messages" dataset with assistant_only_loss=True:
`datasets` unifies the Arrow schema of every row, so heterogeneous messages and tool JSON
schemas come back padded with None-valued keys (a tool's parameters would render with
properties it never had). Tokenizing ourselves with the same apply_chat_template call keeps
each conversation exactly as written, and TRL takes an `input_ids` + `labels` dataset as is.

Output directory layout, checkpoints, resume and pause/cancel: see ml/trainer_common.py, trainer_hooks.py
and checkpoints.py (shared with DPO and RFT).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from modelmill.errors import TrainingError
from modelmill.ml import chat_format, data, memory, run_config, vision, vision_train
from modelmill.ml import trainer_common as common
from modelmill.ml.report import Reporter
from modelmill.ml.run_config import RunConfig, resolve_run_hyperparameters
from modelmill.ml.trainer_hooks import ReporterHooks
from modelmill.ml.types import ChatExample, TrainResult

BASE_LEARNING_RATE = 2e-4  # LoRA learning rate at learning_rate_multiplier=1.0
# "auto" learning_rate_multiplier under SMALL_DATA_EXAMPLES training examples (resolve_sft_hyperparameters)
SMALL_DATA_EXAMPLES = 500
SMALL_DATA_LR_MULTIPLIER = 3.0
# Random batches drawn from the training set to compare the cost of padded and padding-free batches.
COST_SAMPLE_BATCHES = 256
# The metrics reporter.on_step sends (OpenAI's names), in this order.
METRIC_NAMES = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                "full_valid_loss", "full_valid_mean_token_accuracy")


def resolve_sft_hyperparameters(requested: dict, n_train_examples: int) -> dict:
    """Resolve "auto" (or missing) SFT hyperparameters: the shared rule, run_config.resolve_run_hyperparameters
    (its docstring has it), except the learning rate for small data: under SMALL_DATA_EXAMPLES
    training examples, "auto" learning_rate_multiplier is SMALL_DATA_LR_MULTIPLIER (a LoRA learning rate
    of 6e-4), otherwise 1.0 (BASE_LEARNING_RATE).

    Why: with a few hundred examples a run is a hundred-odd optimizer steps, and at 2e-4 the adapter
    underfits; the intent story (BENCHMARKS.md, "Learning results") measures both multipliers side by
    side on held-out phrasings. Above SMALL_DATA_EXAMPLES the shared rule stands (not re-measured here).

    Returns {"n_epochs": int, "batch_size": int, "learning_rate_multiplier": float}.
    Raises InvalidRequestError for a value of the wrong type or out of range.
    """
    resolved = resolve_run_hyperparameters(requested, n_train_examples)
    if (requested or {}).get("learning_rate_multiplier", "auto") in ("auto", None) \
            and n_train_examples < SMALL_DATA_EXAMPLES:
        resolved["learning_rate_multiplier"] = SMALL_DATA_LR_MULTIPLIER
    return resolved


@dataclass(frozen=True, kw_only=True)
class SFTConfig(RunConfig):
    """One SFT run: the shared RunConfig fields (paths, seed, schedule, LoRA, precision...) plus SFT's own.
    Build it once (the worker or a notebook) and pass it to train_sft."""

    eval_every_steps: int = 5  # valid_loss on one validation batch every N steps; 0 = only at epoch ends
    # Padding-free batches (each batch's examples laid end to end, no padding); None = auto: whichever
    # of padded / padding-free computes less for this data (see padding_free_cost_ratio).
    padding_free: bool | None = None

    def plan_run(self, tokenizer):
        """(this config with max_seq_len, quantization and gradient_checkpointing resolved, its
        memory.MemoryPlan); raises DataValidationError naming over-long examples: trainer_common.plan_run."""
        return common.plan_run(self, tokenizer, example_lengths)


@dataclass(frozen=True)
class TokenizedExample:
    """One conversation as the trainer sees it."""

    input_ids: list[int]  # the rendered conversation's tokens, at most max_seq_len of them
    labels: list[int]  # input_ids on assistant target tokens, -100 elsewhere (no loss there)
    truncated: bool  # the full rendering was longer than max_seq_len and was cut


def tokenize_example(tokenizer, example: ChatExample, max_seq_len: int | None) -> TokenizedExample:
    """Render one example with the model's chat template and mark the tokens to learn.

    chat_format.tokenize_conversation finds every assistant turn (its content or tool calls and its
    end-of-turn token) by diffing renderings of the conversation's prefixes, so any template works,
    with or without {% generation %} markers. Everything else (system, user, tool results, the
    assistant header, turns with weight 0) gets label -100. Raises TrainingError naming the line when
    the template cannot render the conversation (e.g. Llama 3's refuses parallel tool calls).
    """
    from jinja2 import TemplateError

    try:
        ids, mask = chat_format.tokenize_conversation(tokenizer, example.messages, example.tools)
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        raise TrainingError(f"line {example.line}: the model's chat template cannot render this conversation: "
                            f"{e}") from e
    labels = [tok if keep else -100 for tok, keep in zip(ids, mask, strict=True)]
    cut = len(ids) if max_seq_len is None else max_seq_len  # None: no limit (counting an example's full length)
    return TokenizedExample(ids[:cut], labels[:cut], truncated=len(ids) > cut)


def example_lengths(path: Path, tokenizer, config: SFTConfig) -> list[memory.ExampleLength]:
    """Each example's tokens as training renders it (tokenize_example, uncut): trainer_common.plan_run's input."""
    if vision.is_vision_dir(config.base_dir):  # images expanded to their tokens (ml/vision_train.py)
        return vision_train.example_lengths(path, tokenizer, config)
    return [memory.ExampleLength(ex.line, len(tokenize_example(tokenizer, ex, None).input_ids))
            for ex in data.read_examples(Path(path), "supervised", min_examples=1)]



def train_sft(config: SFTConfig, reporter: Reporter) -> TrainResult:
    """Train a LoRA adapter on config.train_path; see the module docstring for the story.

    Returns TrainResult with status "succeeded" (adapter at output_dir/adapter), "cancelled"
    or "paused" (a later call with the same config resumes from the pause checkpoint).
    Raises DataValidationError for an invalid file, TrainingError when nothing is trainable.
    """
    return common.train(config, reporter, load_dataset=_load_dataset, hooks_cls=_SFTHooks,
                        build_trainer=_build_trainer, example_lengths=example_lengths,
                        describe=lambda ds: f"Training on {len(ds)} examples for {config.n_epochs} epoch(s), "
                                            f"batch size {config.batch_size}")


def _load_dataset(path: Path, label: str, tokenizer, config: SFTConfig, reporter: Reporter):
    """Tokenize a JSONL file into a datasets.Dataset of input_ids + labels.

    Examples with no target token left (e.g. truncation cut every assistant turn) are dropped;
    truncation and drops are each reported as one warn event with the count.
    """
    from datasets import Dataset

    if vision.is_vision_dir(config.base_dir):  # the same story with images (ml/vision_train.py)
        return vision_train.load_dataset(path, label, tokenizer, config, reporter)
    # min_examples=1: the service enforces its own minimum at validation time.
    examples = data.read_examples(Path(path), "supervised", min_examples=1)
    rows = [tokenize_example(tokenizer, ex, config.max_seq_len) for ex in examples]
    kept = common.trainable_rows(rows, label, config.max_seq_len, reporter)
    return Dataset.from_dict({"input_ids": [r.input_ids for r in kept], "labels": [r.labels for r in kept]})


def _build_trainer(config: SFTConfig, model, tokenizer, train_ds, valid_ds, callback):
    """TRL SFTTrainer over the pre-tokenized data; the trainer saves into output_dir/.staging."""
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    args = run_config.trainer_args(config, BASE_LEARNING_RATE)
    if vision.is_vision_dir(config.base_dir):  # padded batches with images: ml/vision_train.py
        extra = vision_train.trainer_overrides(config, tokenizer)
        trainer = SFTTrainer(model=model, args=TRLSFTConfig(**args, **extra["args"], shuffle_dataset=False),
                             train_dataset=train_ds, eval_dataset=common.eval_datasets(config, valid_ds),
                             processing_class=tokenizer, data_collator=extra["data_collator"],
                             peft_config=run_config.lora_config(config), callbacks=[callback])
        return common.finish_trainer_setup(trainer, callback)
    lengths, context = [len(ids) for ids in train_ds["input_ids"]], attention_context(model)
    padding_free = use_padding_free(config, lengths, context)
    if padding_free:
        # Examples are already cut to max_seq_len (TRL would not cut them without packing). With no
        # padding in a batch, "all" counts exactly the real tokens ("non_padding" would also drop every
        # <|im_end|>, which is the pad token).
        args.update(padding_free=True, max_length=None, include_num_input_tokens_seen="all")
    ratio = padding_free_cost_ratio(lengths, config.batch_size, context, config.seed)
    why = "set by the config" if config.padding_free is not None else (
        f"auto: padding-free estimated at {ratio:.2f}x the compute of padded batches")
    callback.reporter.on_event("info", f"Batching: {'padding-free' if padding_free else 'padded'} batches of "
                                       f"{config.batch_size} examples ({why})")
    trainer = SFTTrainer(model=model, args=TRLSFTConfig(**args, shuffle_dataset=False), train_dataset=train_ds,
                         eval_dataset=common.eval_datasets(config, valid_ds), processing_class=tokenizer,
                         peft_config=run_config.lora_config(config), callbacks=[callback])
    return common.finish_trainer_setup(trainer, callback)


# ---------------------------------------------------------------- batching ("auto")


def use_padding_free(config: SFTConfig, lengths: list[int], context: float) -> bool:
    """Whether the run uses padding-free batches: config.padding_free when set; otherwise ("auto")
    when batches hold more than one example and padding_free_cost_ratio(...) < 1."""
    if config.padding_free is not None:
        return config.padding_free
    return config.batch_size > 1 and padding_free_cost_ratio(lengths, config.batch_size, context, config.seed) < 1


def padding_free_cost_ratio(lengths: list[int], batch_size: int, context: float, seed: int = 0) -> float:
    """Expected compute of padding-free batches / padded batches, for examples of these lengths (tokens).

    Padded (TRL's default collator): each example is padded to the batch's longest, so a batch of
    lengths l_i computes B x max(l) tokens, each attending over a row of max(l). Padding-free
    (TRL `padding_free=True`): the examples are laid end to end as one row of sum(l) tokens with
    position_ids restarting at 0 for each, so the loss is the padded loss exactly, but attention
    runs under a block-diagonal mask over the whole row (CPU and SDPA have no variable-length
    kernel). A row of width W costs about tokens x (1 + W / context), `context` from
    attention_context(). Padding-free wins on mixed lengths (little padding computed), padded on
    long examples of similar length: on the smart-home demo's 4 x ~420-token batches, padding-free
    forward + backward was measured 1.31x slower on SmolLM2 (a loaded 2-core CPU, 1 thread), and
    this estimate gives 1.29x. The expectation is over COST_SAMPLE_BATCHES random batches (seeded:
    a resumed run makes the same choice).
    """
    rng = random.Random(seed)
    padded = flat = 0.0
    for _ in range(COST_SAMPLE_BATCHES):
        batch = rng.sample(lengths, min(batch_size, len(lengths)))
        longest, total = max(batch), sum(batch)
        padded += len(batch) * longest * (1 + longest / context)
        flat += total * (1 + total / context)
    return flat / padded


def attention_context(model) -> float:
    """The row width (tokens) at which attention costs a token as much as all the model's linear layers
    (the LM head included) do: multiply-adds per token of every nn.Linear / (2 x layers x heads x head_dim)
    per token of context (scores, then weighted values). About 3,900 for SmolLM2-135M."""
    import torch

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return linear / (2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim)


# ---------------------------------------------------------------- the trainer <-> reporter bridge


class _SFTHooks(ReporterHooks):
    """SFT's metrics: loss and mean token accuracy (train, valid batch, full valid set)."""

    METRIC_NAMES = METRIC_NAMES
    config: SFTConfig

    def train_metrics(self, logs: dict) -> dict[str, float]:
        return {"train_loss": logs["loss"], "train_mean_token_accuracy": logs["mean_token_accuracy"]}

    def eval_metrics(self, name: str, metrics: dict) -> dict[str, float]:
        # TRL names its own metrics eval_* whatever the prefix (SFTTrainer.log); the loss follows the prefix.
        return {f"{name}_loss": metrics[f"{name}_loss"],
                f"{name}_mean_token_accuracy": metrics["eval_mean_token_accuracy"]}
