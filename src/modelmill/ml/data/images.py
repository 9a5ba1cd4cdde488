"""image_url content parts in training lines: allowed for vision bases only, in user messages, at most
MAX_IMAGES_PER_EXAMPLE per line; the image itself is checked by vision.check_image_part."""

from __future__ import annotations

from modelmill.ml.data.checker import Checker, short
from modelmill.ml.vision import MAX_IMAGES_PER_EXAMPLE, check_image_part


def check_image(m: dict, part: dict, ppath: str, c: Checker) -> None:
    """An image_url part: only for vision bases, only in user messages (OpenAI's rule), at most
    MAX_IMAGES_PER_EXAMPLE per line; the image itself is checked by vision.check_image_part."""
    policy = c.image_policy
    if policy is None:
        c.add(f"{ppath}.type", "unsupported_content_part", "image_url parts need a vision-language base model "
                                                           "(e.g. modelmill-tiny-vl); this base model is text-only")
        return
    if policy.refused:
        c.add(f"{ppath}.type", "unsupported_content_part", policy.refused)
        return
    if m.get("role") != "user":
        c.add(f"{ppath}.type", "unsupported_content_part",
              f"image_url parts are only allowed in user messages, not {short(m.get('role'))}")
        return
    c.images += 1
    if c.images == MAX_IMAGES_PER_EXAMPLE + 1:
        c.add(ppath, "too_many_images", f"more than {MAX_IMAGES_PER_EXAMPLE} images in one example (OpenAI's limit)")
    check_image_part(part, ppath, c.add, policy)

