"""Vision-language models (VLMs): images in training data and chat, for bases loaded through
transformers' image-text-to-text auto classes (AutoModelForImageTextToText + AutoProcessor).

How an image travels, the same way in training and in sampling:
1. OpenAI's `{"type": "image_url", "image_url": {"url", "detail"?}}` part is validated (ml/data/images.py
   calls `check_image_part`) and later loaded by `load_image`: a base64 `data:` URL, or an http(s) URL
   on an allow-listed host (ImagePolicy.hosts, from Settings.image_hosts) fetched with a size and time
   limit. Anything else is refused with a code naming the problem.
2. `with_placeholders` swaps each image part for a text part holding the family's placeholder
   (Idefics3/SmolVLM: `<image>`), so the conversation renders through the same chat template and the
   same assistant-turn masking (chat_format.tokenize_conversation) as text: images only ever sit in
   user messages, so no placeholder is ever inside a trained span.
3. `expand` replaces each placeholder token by the tokens the model's own processor makes for that
   image (Idefics3: `<fake_token_around_image><global-img><image>x N<fake_token_around_image>`), with
   label -100, and `pixel_inputs` runs the processor's image processor. Image tokens are never targets.

OpenAI's vision fine-tuning limits applied here (docs/vision.md): JPEG, PNG or WEBP only; RGB or RGBA
images; at most 10 MB per image; at most 64 images per example; images only in user messages (never
assistant output). `detail`: "low" asks for the fewest image tokens (OpenAI: one 512px low-res view),
so the image processor runs with detail_kwargs(): for Idefics3/SmolVLM no image splitting and the
longest edge at its single-tile size; LLaVA's CLIP processor always makes one fixed-size tile, so low
equals high there. "high" and "auto" use the processor's own settings. The detail travels with the
loaded PIL image (img.info["detail"], see load_image), so training, chat, evals and the file report
all count and build the same tokens.

Families (VISION_FAMILIES): Idefics3 / SmolVLM, LLaVA (CLIP vision tower + a Llama/Qwen2/Mistral text
model). `modelmill-tiny-vl` is a tiny random Idefics3 with the SmolLM2 tokenizer plus Idefics3's image
tokens and a real Idefics3 processor (build_tiny_vl).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # OpenAI: images up to 10 MB
MAX_IMAGES_PER_EXAMPLE = 64  # OpenAI: at most 64 images per training example
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")  # OpenAI: JPEG, PNG or WEBP
IMAGE_MODES = ("RGB", "RGBA")  # OpenAI: RGB or RGBA images
DETAILS = ("auto", "low", "high")
FETCH_TIMEOUT_S = 10.0  # whole fetch of one http(s) image, connect + read
TINY_VL_SEED = 4321  # modelmill-tiny-vl's weights: torch.manual_seed(TINY_VL_SEED) + Idefics3 init
_DATA_URL_RE = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Family:
    """How one VLM family marks an image in text."""

    placeholder: str  # the text a chat template puts where an image goes (one special token)


# model_type (config.json) -> family. Idefics3 is SmolVLM's architecture; LLaVA (1.5) is a CLIP vision
# tower + projector in front of any causal text model, with LlavaProcessor + CLIPImageProcessor.
VISION_FAMILIES: dict[str, Family] = {
    "idefics3": Family(placeholder="<image>"),
    "smolvlm": Family(placeholder="<image>"),
    "llava": Family(placeholder="<image>"),
}


VISION_BUILTINS = ("modelmill-tiny-vl",)  # ml/models.BASE_MODELS entries that are VLMs


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from. Built from Settings at the service edge and passed down."""

    hosts: tuple[str, ...] = ()  # hostnames whose http(s) image URLs are fetched; () = data: URLs only
    max_bytes: int = MAX_IMAGE_BYTES  # per image, decoded (data:) or downloaded (http)
    timeout_s: float = FETCH_TIMEOUT_S  # per http(s) fetch
    refused: str = ""  # why image parts are refused although the base reads images (RFT); "" = accepted


@dataclass(frozen=True)
class ImageRef:
    """One image part of a conversation: its url and OpenAI's detail ("auto" | "low" | "high")."""

    url: Any
    detail: str = "auto"


class ImageError(ValueError):
    """An image that cannot be used; `code` is the LineProblem / API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- which models see images


def is_vision_dir(model_dir: Path) -> bool:
    """Whether the HF directory holds a VLM this module serves (config.json's model_type)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") in VISION_FAMILIES


def is_vision_base(home: Path, name: str) -> bool:
    """Whether base model `name` (built-in or user-added) is a VLM, without building it."""
    model_dir = Path(home) / "models" / name
    return is_vision_dir(model_dir) if (model_dir / "config.json").is_file() else name in VISION_BUILTINS


def family_of(model_dir: Path) -> Family:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return VISION_FAMILIES[cfg["model_type"]]


def load_processor(model_dir: Path):
    """The model's own processor (image processor + tokenizer + chat template); never remote code."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)


# ---------------------------------------------------------------- loading and checking images


def load_image(ref: ImageRef | str, policy: ImagePolicy):
    """A PIL image (mode RGB) from an image part's ImageRef (or a bare url, detail "auto"), its detail in
    img.info["detail"]. Raises ImageError: invalid_image_url, image_url_not_allowed, image_too_large,
    invalid_image (undecodable), unsupported_image_format."""
    ref = ref if isinstance(ref, ImageRef) else ImageRef(ref)
    return with_detail(decode_image(image_bytes(ref.url, policy)), ref.detail)


def with_detail(img, detail: str):
    """`img`, carrying OpenAI's detail: the processor calls below read it (detail_of) per image. It
    rides on the PIL image so the images' path through sampling and batching stays one list."""
    img.info["detail"] = detail if detail in DETAILS else "auto"
    return img


def detail_of(img) -> str:
    return getattr(img, "info", {}).get("detail", "auto")


def detail_kwargs(processor, detail: str) -> dict:
    """Image-processor arguments for one image's detail. "low" = the fewest image tokens the model
    takes (OpenAI: a 512px low-res view): an Idefics3/SmolVLM processor (it has max_image_size) skips
    image splitting and resizes the longest edge to its single-tile size. A processor with one fixed
    tile (LLaVA's CLIP crop) has nothing smaller, so low = high there; "high"/"auto" = its own settings."""
    image_processor = processor.image_processor
    tile = getattr(image_processor, "max_image_size", None)
    if detail != "low" or not isinstance(tile, dict) or "longest_edge" not in tile:
        return {}
    return {"do_image_splitting": False, "size": {"longest_edge": tile["longest_edge"]}}


def decode_image(raw: bytes):
    """A PIL image (mode RGB) from encoded bytes; ImageError invalid_image / unsupported_image_format."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw))
        fmt, mode = img.format, img.mode
        if fmt not in IMAGE_FORMATS:
            raise ImageError("unsupported_image_format",
                             f"image format {fmt or 'unknown'} is not supported (use {', '.join(IMAGE_FORMATS)})")
        if mode not in IMAGE_MODES:
            raise ImageError("unsupported_image_format",
                             f"image mode {mode} is not supported (images must be {' or '.join(IMAGE_MODES)})")
        img.load()  # decode now: a truncated file fails here, not in the middle of training
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError("invalid_image", f"the image cannot be decoded: {str(e)[:120]}") from None
    return img.convert("RGB")


def image_bytes(url: Any, policy: ImagePolicy) -> bytes:
    """The encoded image behind a data: or allow-listed http(s) URL, at most policy.max_bytes."""
    if not isinstance(url, str) or not url:
        raise ImageError("invalid_image_url", "image_url.url must be a non-empty string")
    if url[:5].lower() == "data:":
        match = _DATA_URL_RE.match(url)
        if match is None:
            raise ImageError("invalid_image_url", "a data: URL must be base64: data:image/<type>;base64,<data>")
        encoded = url[match.end():]
        if len(encoded) * 3 // 4 > policy.max_bytes + 3:
            raise ImageError("image_too_large", f"the image is over {_mb(policy.max_bytes)} (OpenAI's limit)")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("invalid_image", "the data: URL is not valid base64") from None
        if len(raw) > policy.max_bytes:  # the check above only bounds the work; this one is exact
            raise ImageError("image_too_large", f"the image is over {_mb(policy.max_bytes)} (OpenAI's limit)")
        return raw
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageError("invalid_image_url", f"unsupported image URL scheme {parts.scheme!r}: use a base64 data: "
                                              "URL or an http(s) URL")
    if parts.hostname.lower() not in policy.hosts:
        allowed = ", ".join(policy.hosts) if policy.hosts else "none: send images as base64 data: URLs"
        raise ImageError("image_url_not_allowed", f"images are not fetched from {parts.hostname} (allowed hosts: "
                                                  f"{allowed}; MODELMILL_IMAGE_HOSTS)")
    return _fetch(url, policy)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could leave the allow-listed host, so none is followed."""

    def redirect_request(self, *args, **kwargs):
        return None


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=policy.timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise ImageError("image_too_large", f"the image is over {_mb(policy.max_bytes)} (OpenAI's limit)")
            raw = resp.read(policy.max_bytes + 1)
    except ImageError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:  # HTTP errors, redirects, timeouts, resets
        raise ImageError("image_fetch_failed", f"cannot fetch the image: {str(e)[:120]}") from None
    if len(raw) > policy.max_bytes:
        raise ImageError("image_too_large", f"the image is over {_mb(policy.max_bytes)} (OpenAI's limit)")
    return raw


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def check_image_part(part: dict, ppath: str, add, policy: ImagePolicy) -> bool:
    """Validate one image_url content part (keys, detail, and the image itself); problems go to
    add(field, code, message). True when it is a usable image."""
    for key in part:
        if key not in ("type", "image_url"):
            add(f"{ppath}.{key}", "unknown_key", f"unknown key {key!r} in an image_url part")
    spec = part.get("image_url")
    if not isinstance(spec, dict):
        add(f"{ppath}.image_url", "missing_field" if spec is None else "invalid_type",
            "an image_url part needs image_url: {\"url\": ..., \"detail\"?: ...}")
        return False
    for key in spec:
        if key not in ("url", "detail"):
            add(f"{ppath}.image_url.{key}", "unknown_key", f"unknown key {key!r} in image_url (allowed: url, detail)")
    if "detail" in spec and spec["detail"] not in DETAILS:
        add(f"{ppath}.image_url.detail", "invalid_value", f"detail must be one of {', '.join(DETAILS)}")
    try:
        load_image(spec.get("url"), policy)
    except ImageError as e:
        add(f"{ppath}.image_url.url", e.code, e.message)
        return False
    return True


# ---------------------------------------------------------------- conversations with images


def has_images(messages: list[dict]) -> bool:
    return any(isinstance(m, dict) and isinstance(m.get("content"), list) and
               any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"]) for m in messages)


def with_placeholders(messages: list[dict], placeholder: str) -> tuple[list[dict], list[ImageRef]]:
    """(messages with every image part replaced by a text part holding `placeholder`, the images' refs
    (url, detail) in order). The placeholder stands alone on its line, as SmolVLM's own template puts it."""
    out, refs = [], []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "image_url":
                spec = p.get("image_url") or {}
                refs.append(ImageRef(spec.get("url"), spec.get("detail") or "auto"))
                parts.append({"type": "text", "text": placeholder})
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    return out, refs


def expand(processor, ids: list[int], images: list, trained: list[bool] | None = None
           ) -> tuple[list[int], list[bool], list[tuple[int, int]]]:
    """Replace the i-th image placeholder token in `ids` by the processor's tokens for images[i].
    Returns (ids, trained, [(start, end) token span of each image]) where every image token is
    untrained. Raises ValueError when the number of placeholder tokens differs from the number of
    images (e.g. "<image>" typed as text)."""
    token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    trained = trained if trained is not None else [False] * len(ids)
    where = [i for i, t in enumerate(ids) if t == token_id]
    if len(where) != len(images):
        raise ValueError(f"{len(images)} image(s) but {len(where)} {processor.image_token} token(s) in the text "
                         f"(the text must not contain {processor.image_token} itself)")
    out_ids: list[int] = []
    out_trained: list[bool] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for pos, img in zip(where, images, strict=True):
        out_ids += ids[start:pos]
        out_trained += trained[start:pos]
        image_ids = image_token_ids(processor, img)
        spans.append((len(out_ids), len(out_ids) + len(image_ids)))
        out_ids += image_ids
        out_trained += [False] * len(image_ids)
        start = pos + 1
    return out_ids + ids[start:], out_trained + trained[start:], spans


def image_token_ids(processor, image) -> list[int]:
    """The tokens the processor puts in the text for one image (placeholder expanded), at its detail."""
    out = processor(text=[processor.image_token], images=[image], add_special_tokens=False,
                    **detail_kwargs(processor, detail_of(image)))
    return list(out["input_ids"][0])


def pixel_inputs(processor, images_B: list[list]) -> dict:
    """The image tensors for a batch: one list of PIL images per row (rows may have none), each image
    processed at its own detail (image_features), laid out by batch_pixels."""
    return batch_pixels([image_features(processor, imgs) for imgs in images_B])[0]


def image_features(processor, images: list) -> list[dict]:
    """The image processor's tensors for each image on its own, at the image's detail (one processor
    call per image: one call takes one set of settings, and `detail` is per image)."""
    return [processor.image_processor(images=[img], return_tensors="pt", **detail_kwargs(processor, detail_of(img)))
            for img in images]


def batch_pixels(features_B: list[list[dict]]) -> tuple[dict, list[int]]:
    """(the generate()/forward() image tensors for a batch, how many vision-encoder inputs each row owns)
    from one list of image_features per row (rows may have none). Two layouts, as the families' models
    take them:
    - stacked (Idefics3: the image processor gives 5-D pixel_values): [B, images, 3, H, W], a row's
      images (tiles) in order, rows with fewer padded with all-zero images, which the model drops (its
      real_images_inds) before the vision encoder, and the pixel_attention_mask with zeros;
    - flat (LLaVA: 4-D): [all images, 3, H, W] in row order, as the model scatters image features into
      the image tokens in reading order.
    Either way the vision encoder sees the rows' real images (tiles) in row order, row b's count being
    counts[b] (multi_lora masks per-image LoRA outputs with it).
    Hand-written because each image is processed with its own detail settings: the processor pads a batch
    it processed itself in one call with one set of settings, so the rows are padded here the way its own
    `pad` does (zero images, zero mask, images padded at the bottom / right to the batch's largest)."""
    import torch

    shown = [r for row in features_B for r in row]
    if not shown:
        return {}, [0] * len(features_B)
    if shown[0]["pixel_values"].dim() == 4:
        counts = [sum(r["pixel_values"].shape[0] for r in row) for row in features_B]
        return {k: torch.cat([r[k] for r in shown]) for k in shown[0].keys() if torch.is_tensor(shown[0][k])}, counts
    counts = [sum(r["pixel_values"].shape[1] for r in row) for row in features_B]
    keys = [k for k in shown[0].keys() if torch.is_tensor(shown[0][k])]
    height = max(r["pixel_values"].shape[-2] for r in shown)
    width = max(r["pixel_values"].shape[-1] for r in shown)
    rows = {k: [torch.cat([_pad_hw(r[k][0], height, width) for r in row]) if row else None for row in features_B]
            for k in keys}
    most = max(counts)
    out = {}
    for k in keys:
        like = next(t for t in rows[k] if t is not None)
        out[k] = torch.stack([torch.cat([t if t is not None else like[:0],
                                         like.new_zeros([most - (t.shape[0] if t is not None else 0),
                                                         *like.shape[1:]])]) for t in rows[k]])
    return out, counts


def _pad_hw(t, height: int, width: int):
    """Zero-pad the last two dims (H, W) of an image tensor (or its pixel mask) to height x width, as
    the image processor itself pads images of one call to a common size."""
    import torch.nn.functional as F

    return F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]))


def prompt_inputs(processor, prompt_ids: list[list[int]], images_P: list[list]) -> list[list[dict]]:
    """Sampling: expand each prompt's placeholders in place (prompt_ids is changed) and return each
    prompt's image_features. ml/batching lays the features of all rows of a batch (any requests, with
    images or not) out together with batch_pixels, just before its one generate()."""
    for i, (ids, images) in enumerate(zip(prompt_ids, images_P, strict=True)):
        try:
            prompt_ids[i] = expand(processor, ids, images)[0]
        except ValueError as e:
            from modelmill.errors import InvalidRequestError

            raise InvalidRequestError(str(e), param="messages", code="invalid_value") from None
    return [image_features(processor, images) for images in images_P]


def count_image_tokens(processor, images: list) -> int:
    """How many tokens these images take in the text (the file report's image-token count)."""
    return sum(len(image_token_ids(processor, img)) for img in images)


# ---------------------------------------------------------------- the built-in tiny VLM

# The processor's own chat template (for users who call AutoProcessor.apply_chat_template on the
# directory): ModelMill's ChatML with an image part rendered as <image>. ModelMill itself renders
# through chat_format with with_placeholders(), which gives the same text.
TINY_VL_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='You are a helpful AI assistant named SmolLM, trained by Hugging Face') -%}"
    "{%- if messages and messages[0].role == 'system' -%}{%- set ns.system = messages[0].content if messages[0].content"
    " is string else messages[0].content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')"
    " -%}{%- set rest = messages[1:] -%}{%- else -%}{%- set rest = messages -%}{%- endif -%}"
    "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}"
    "{%- for message in rest -%}{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'text' -%}{{- part.text -}}{%- elif part.type in ('image', 'image_url') -%}{{- '<image>' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{{- '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
TINY_VL_IMAGE_SIZE = 32  # pixels per side of one tile the vision encoder sees (detail "low": one tile)
TINY_VL_MAX_EDGE = 64  # longest edge an image is resized to before splitting (detail high/auto: up to 2x2 tiles)


def build_tiny_vl(tokenizer, out: Path, progress) -> None:
    """modelmill-tiny-vl: a random Idefics3 (SmolVLM's architecture; vision encoder hidden 32 x 1 layer,
    Llama text model hidden 64 x 2 layers, about 3.2M parameters) with `tokenizer` (SmolLM2's) plus
    Idefics3's image tokens, and a real Idefics3 processor that splits images as SmolVLM's does, at toy
    scale: the longest edge resized to 64, cut into 32x32 tiles (up to 2x2) plus a 32x32 global view;
    each tile is 4 image tokens ((32 / 8)^2 patches / scale_factor^2). Detail "low" is the global view
    alone: 7 tokens. Same bytes on every build (fixed seed)."""
    import copy

    import torch
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = copy.deepcopy(tokenizer)
    tiles = TINY_VL_MAX_EDGE // TINY_VL_IMAGE_SIZE
    tile_tokens = [f"<row_{r}_col_{c}>" for r in range(1, tiles + 1) for c in range(1, tiles + 1)]
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>",
                                                          "<end_of_utterance>", "<global-img>", *tile_tokens]})
    # The PIL image processor: the torchvision one would need torchvision, which ModelMill does not install.
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=True,
                                                size={"longest_edge": TINY_VL_MAX_EDGE},
                                                max_image_size={"longest_edge": TINY_VL_IMAGE_SIZE})
    patch, scale = 8, 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, chat_template=TINY_VL_CHAT_TEMPLATE,
                                  image_seq_len=(TINY_VL_IMAGE_SIZE // patch) ** 2 // scale ** 2)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  image_size=TINY_VL_IMAGE_SIZE, patch_size=patch)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale, tie_word_embeddings=True,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(TINY_VL_SEED)
        model = Idefics3ForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    progress("modelmill-tiny-vl built")
