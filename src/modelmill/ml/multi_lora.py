"""One loaded base model serving many LoRA adapters at once (PEFT named adapters).

The Sampler keeps ONE copy of each base model. Each fine-tuned adapter of that base is loaded
onto it by name on first use (`PeftModel.load_adapter`), so ten fine-tuned models of one base
cost one base plus ten small adapters, and concurrent requests for different adapters of the
base decode in ONE batch (ml/batching.py groups requests by base).

How a batch runs, by the adapters its rows use (generate(), called under GENERATE_LOCK):
- one adapter only (the common case: traffic to one fine-tuned model): that adapter is merged
  into the base weights (PEFT merge_adapter) and stays merged until a batch needs something
  else, so it decodes at the speed of a merged model (no LoRA matmuls per step). Only a float32
  base merges (ModelMill samples in float32; see _float32 for half precision);
- base rows only: unmerge, then decode with the adapters disabled (PEFT disable_adapter);
- rows of several adapters (and maybe the base): unmerge, then each row gets its own adapter's
  LoRA output from the adapters stacked side by side (_stacked; the comment above it says why
  this is not PEFT's own mixed batch); adapters other than plain LoRA Linears (LoRA on
  embeddings, DoRA, LoRA bias) use PEFT's `generate(adapter_names=[...])`, and run unmerged
  even alone (_plain). With a VLM's images in the batch only the stacked path is used: its vision-side
  LoRA layers see images, not rows, and get a per-image mask (mixes_images, _generate_stacked).
Measured on SmolLM2-135M (8 rows x 16 greedy tokens, CPU seconds, medians of 3 on a shared
2-core machine, in development): one merged adapter 4.85 s, two adapters stacked 4 + 4 5.04 s
(0.96x), PEFT's mixed batch 5.75 s (0.84x), with the same tokens from both mixed paths; with 64
tokens (and other work running) 10.7 s, 13.4 s (0.80x) and 17.0 s (0.63x). The base alone, which
costs what a merged adapter costs, read between 0.91x and 1.29x of it in these runs: differences
under about 25% are noise on that machine. bench/bench_serving.py measures the same through the HTTP API.
Merging and unmerging add and subtract the same LoRA delta in float32, so the base weights can
drift by float32 round-off (about one ulp per switch); that is the same order as the round-off
between merged and unmerged decoding itself, which greedy batched decoding already had.

Thread safety: acquire()/release()/evict() run in request threads and take this object's lock;
anything that changes the model's modules also takes batching.GENERATE_LOCK, so it never runs
while a generate() is decoding. generate() runs with GENERATE_LOCK held and never takes the
lock of this object (lock order: object lock, then GENERATE_LOCK).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from modelmill.errors import NotFoundError
from modelmill.ml import ml_imports

with ml_imports():  # not alongside another thread's first import of the stack (see modelmill.ml)
    import torch
    from peft import PeftModel

from modelmill.ml import batching, models

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
DEFAULT_MAX_ADAPTERS = 8  # adapters kept loaded per base (least recently used beyond this is dropped)


class AdapterCache:
    """Adapters loaded by name onto one base, least recently used dropped beyond `max_adapters`,
    never while a request holds them (acquire() pins, release() unpins). Subclasses say how an
    adapter is loaded and dropped: MultiLoraModel in this process, vllm_backend.VLLMHost on a
    vLLM server."""

    def __init__(self, max_adapters: int = DEFAULT_MAX_ADAPTERS):
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self.max_adapters = max_adapters
        self.adapter_loads = 0  # adapters loaded so far (cache misses)
        self._names: OrderedDict[Path, str] = OrderedDict()  # adapter dir -> adapter name, LRU first
        self._pins: Counter[str] = Counter()  # requests in flight per adapter name (never dropped then)
        self._lock = threading.Lock()

    def adapters(self) -> list[Path]:
        """Loaded adapter directories, least recently used first."""
        with self._lock:
            return list(self._names)

    def acquire(self, adapter_dir: Path | None) -> str | None:
        """The adapter's name (loading it on first use), pinned until release(); None = the base."""
        if adapter_dir is None:
            return None
        with self._lock:
            name = self._names.get(adapter_dir)
            if name is None:
                if not adapter_dir.is_dir():
                    raise NotFoundError(f"adapter directory {adapter_dir} not found")
                models._require_safetensors(adapter_dir, "adapter_model.safetensors")
                name = self._load_adapter(adapter_dir)
                self._names[adapter_dir] = name
                self.adapter_loads += 1
            self._names.move_to_end(adapter_dir)
            self._pins[name] += 1
            self._shrink()
            return name

    def release(self, name: str | None) -> None:
        if name is None:
            return
        with self._lock:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]
            self._shrink()

    def evict(self, adapter_dir: Path) -> bool:
        """Drop one adapter (if loaded and not in use)."""
        with self._lock:
            name = self._names.get(adapter_dir)
            if name is None or self._pins[name]:
                return False
            self._drop_adapter(name)
            del self._names[adapter_dir]
            return True

    def _shrink(self) -> None:
        for adapter_dir, name in list(self._names.items()):
            if len(self._names) <= self.max_adapters:
                return
            if not self._pins[name]:
                self._drop_adapter(name)
                del self._names[adapter_dir]

    def _load_adapter(self, adapter_dir: Path) -> str:  # called with self._lock held
        raise NotImplementedError

    def _drop_adapter(self, name: str) -> None:  # called with self._lock held
        raise NotImplementedError


class MultiLoraModel(AdapterCache):
    """A transformers base model plus LoRA adapters loaded by name with PEFT."""

    serves_adapters = True  # batching.decode_batch passes each row's adapter (adapters_B)

    def __init__(self, model: Any, max_adapters: int = DEFAULT_MAX_ADAPTERS):
        super().__init__(max_adapters)
        self.model = model  # a transformers model until the first adapter, then the PeftModel around it
        self.config = model.config
        self.generation_config = getattr(model, "generation_config", None)
        self._merged: str | None = None  # the adapter merged into the base weights right now
        # Merging is undone by subtracting the same delta, exact to float32 round-off. In bf16/fp16
        # one merge + unmerge could move a weight by half a bf16 ulp (~0.4%), every switch, so a
        # half-precision base never merges: one adapter then runs unmerged like a mixed batch.
        weight = next(model.parameters(), None) if hasattr(model, "parameters") else None  # (tests' fakes have none)
        self._float32 = weight is None or weight.dtype == torch.float32
        self._stacks: dict[tuple[str, ...], Any] = {}  # _stacked() per set of adapters (cleared on changes)
        self._plain_cache: dict[str, bool] = {}  # _plain() per adapter
        self._next = 0

    def _load_adapter(self, adapter_dir: Path) -> str:
        self._next += 1
        name = f"adapter_{self._next}"  # PEFT names become module keys: no dots or slashes
        with batching.GENERATE_LOCK:  # injecting LoRA layers must not overlap a decode
            self._set_merged(None)  # PEFT unmerges on its own when an adapter is added; keep track
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name,
                                                       is_trainable=False)
            self.model.eval()
            self._stacks.clear()
            # known from now on (mixes_images reads it without the lock): an adapter's own layers never change
            self._plain(name)
        return name

    def _drop_adapter(self, name: str) -> None:
        with batching.GENERATE_LOCK:
            self._set_merged(None)
            self.model.delete_adapter(name)
            self._stacks.clear()
            self._plain_cache.pop(name, None)

    # -- decoding ----------------------------------------------------------------------------------

    def mixes_images(self, names) -> bool:
        """Whether rows of these adapters (None = the base) may share a generate() with images: only when
        every adapter stacks (_plain), as only the stacked path gives each image its own row's LoRA in the
        vision encoder (PEFT's mixed batch would hand the vision layers the rows' adapter list)."""
        return all(n is None or self._plain_cache.get(n, False) for n in names)

    def generate(self, *, adapters_B: list[str | None], images_B: list[int] | None = None, **kwargs: Any):
        """model.generate(**kwargs) with row b decoded by adapter adapters_B[b] (None = the base), its
        images_B[b] vision-encoder inputs (a VLM's images or tiles, in row order; None = no images) too.
        The caller holds batching.GENERATE_LOCK."""
        model = self.model
        if not isinstance(model, PeftModel):
            return model.generate(**kwargs)
        names = set(adapters_B)
        if names == {None}:
            self._set_merged(None)
            with model.disable_adapter():
                return model.generate(**kwargs)
        plain = all(self._plain(n) for n in names if n is not None)
        if len(names) == 1:
            if plain and self._float32:
                self._set_merged(adapters_B[0])
            else:  # see _plain and _float32: run it unmerged, as it was trained
                self._set_merged(None)
                model.set_adapter(adapters_B[0])
            return model.generate(**kwargs)
        self._set_merged(None)
        if not plain:  # an adapter kind the stacked path does not cover: PEFT's own mixed batch
            if any(images_B or []):  # batching._joins never forms this batch (see mixes_images)
                raise RuntimeError("images in a batch that mixes adapters need stacked (plain LoRA) adapters")
            return model.generate(adapter_names=[n or BASE for n in adapters_B], **kwargs)
        return self._generate_stacked(self._stacked(tuple(sorted(n for n in names if n is not None))),
                                      adapters_B, images_B, kwargs)

    def _plain(self, name: str) -> bool:
        """Whether every layer of adapter `name` is a plain LoRA Linear (no DoRA or other variant, no
        LoRA bias): those merge exactly and stack (_stacked). Others (LoRA on embeddings, whose
        merge into tied weights would also change the output head; convolutions; DoRA) always
        run unmerged through PEFT."""
        if name not in self._plain_cache:
            from peft.tuners.lora.layer import Linear as LoraLinear
            from peft.tuners.lora.layer import LoraLayer

            layers = [m for m in self.model.modules() if isinstance(m, LoraLayer) and name in m.r]
            self._plain_cache[name] = all(
                type(m) is LoraLinear and name not in m.lora_variant and not m.use_dora.get(name, False)
                and not getattr(m, "lora_bias", {}).get(name, False) for m in layers)
        return self._plain_cache[name]

    # Why a hand-written mixed-adapter path: PEFT's `generate(adapter_names=...)` gives the right tokens,
    # but on a CPU it loops in Python over the adapters of every LoRA layer, gathering each adapter's
    # rows with a list index and scattering its output back (about ten small ops and three module
    # calls per adapter per layer per step). In development runs on SmolLM2-135M (module docstring)
    # it cost 1.19x the CPU time of one merged adapter, and 8 concurrent requests split 4 + 4 got
    # 0.55x the wall-clock throughput of 8 to one adapter on the shared machine. Stacking the batch's adapters side by side turns that
    # into two matmuls per layer whatever the number of adapters: row b's LoRA output is
    # ((x_b @ A_cat) * mask_b) @ B_cat, where A_cat = [A_1^T | A_2^T | ...], B_cat holds each
    # adapter's scaled B^T in the same column blocks, and mask_b keeps the block of row b's adapter
    # (all zero for a base row). This is the usual multi-LoRA formulation (Punica / S-LoRA do the
    # same with gathered kernels); the base layer stays PEFT's, with its adapters disabled.
    # A VLM's vision encoder and projector see images (or tiles), not rows: row b's images_B[b] inputs
    # come in row order, so their LoRA layers take a per-image mask (each image its row's adapter).

    def _stacked(self, names: tuple[str, ...]):
        """(LoRA layers with their A_cat (in x R) and B_cat (R x out), {name: column slice}) for these
        (plain, see _plain) adapters."""
        if names in self._stacks:
            return self._stacks[names]
        from peft.tuners.lora.layer import LoraLayer

        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer) and any(n in m.r for n in names)]
        ranks = {n: max(m.r[n] for m in layers if n in m.r) for n in names}
        columns, start = {}, 0
        for n in names:
            columns[n] = slice(start, start + ranks[n])
            start += ranks[n]
        stacked = []
        text_side = self._text_side()
        for m in layers:
            weight = m.get_base_layer().weight  # (in/out_features are PEFT's, right for Conv1D bases too)
            a_cat = torch.zeros(m.in_features, start, dtype=weight.dtype, device=weight.device)
            b_cat = torch.zeros(start, m.out_features, dtype=weight.dtype, device=weight.device)
            for n in names:
                if n in m.lora_A:
                    r = m.r[n]
                    cols = columns[n]
                    a_cat[:, cols.start:cols.start + r] = m.lora_A[n].weight.T
                    b_cat[cols.start:cols.start + r] = (m.lora_B[n].weight * m.scaling[n]).T
            stacked.append((m, a_cat, b_cat, id(m) not in text_side))
        self._stacks[names] = (stacked, columns)
        return self._stacks[names]

    def _text_side(self) -> set[int]:
        """ids of the modules that see one input per batch row: the text decoder and the output head.
        A VLM's other modules (vision encoder, projector) see its images."""
        base = self.model.get_base_model()
        modules = [base.get_output_embeddings()]
        try:
            modules.append(base.get_decoder())
        except (AttributeError, NotImplementedError, ValueError):  # no known decoder: every layer sees rows
            modules.append(base)
        return {id(x) for m in modules if m is not None for x in m.modules()}

    def _generate_stacked(self, stacked, adapters_B: list[str | None], images_B: list[int] | None, kwargs: dict):
        layers, columns = stacked
        width = layers[0][1].shape[1]

        def masks(adapters: list[str | None]):
            mask = torch.zeros(len(adapters), width, dtype=layers[0][1].dtype, device=layers[0][1].device)
            for b, n in enumerate(adapters):
                if n is not None:
                    mask[b, columns[n]] = 1.0
            return mask

        mask_B_R = masks(adapters_B)
        mask_I_R = masks([n for n, k in zip(adapters_B, images_B or [0] * len(adapters_B), strict=True)
                          for _ in range(k)])

        def add_lora(a_cat, b_cat, per_image: bool):
            def hook(module, args, output):
                x = args[0]
                rows = mask_I_R if per_image else mask_B_R
                if x.shape[0] != rows.shape[0]:  # never guess whose input this is: fail the batch (retried alone)
                    raise RuntimeError(f"a LoRA layer got {x.shape[0]} inputs for {rows.shape[0]} "
                                       f"{'images' if per_image else 'rows'}")
                mask = rows.view(rows.shape[0], *([1] * (x.dim() - 2)), width)
                output.add_(((x.to(a_cat.dtype) @ a_cat) * mask) @ b_cat)
            return hook

        handles = [m.register_forward_hook(add_lora(a_cat, b_cat, per_image))
                   for m, a_cat, b_cat, per_image in layers]
        try:
            with self.model.disable_adapter():
                return self.model.generate(**kwargs)
        finally:
            for h in handles:
                h.remove()

    def _set_merged(self, name: str | None) -> None:
        if self._merged == name:
            return
        if self._merged is not None:
            self.model.unmerge_adapter()
            self._merged = None
        if name is not None:
            # Active = merged, so a layer the adapter does not touch applies no other adapter.
            self.model.set_adapter(name)
            self.model.merge_adapter([name])
            self._merged = name
