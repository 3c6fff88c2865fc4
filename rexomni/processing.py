"""The processor: Qwen2.5-VL's image processing and chat template, without torchvision.

``Qwen2_5_VLProcessor`` insists on a video processor, and the video processor needs torchvision,
which CPU machines here cannot have. :class:`RexOmniProcessor` declares only an image processor
(the PIL one) and a tokenizer; everything else, including ``mm_token_type_ids`` in its outputs,
is Qwen2.5-VL's own. It is registered so that ``AutoProcessor.from_pretrained(folder)`` finds it
by the ``processor_class`` a saved folder records (see :func:`register_processor`).
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

# The official Qwen2.5-VL chat template, character for character as TRL ships it
# (trl/chat_templates/qwen2_5_vl.jinja): TRL recognises this exact string and swaps in its
# {% generation %} variant for assistant-only losses.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# The released Rex-Omni image limits: 16 to 2560 visual tokens of 28x28 pixels.
RELEASED_MIN_PIXELS = 16 * 28 * 28
RELEASED_MAX_PIXELS = 2560 * 28 * 28


class RexOmniProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        # Skip Qwen2_5_VLProcessor.__init__, which passes a video processor positionally.
        super(Qwen2_5_VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


def make_processor(tokenizer, min_pixels: int, max_pixels: int, patch_size: int = 14, merge_size: int = 2,
                   temporal_patch_size: int = 2) -> RexOmniProcessor:
    """A processor for ``tokenizer`` whose images are resized to between min and max pixels."""
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    chat_template = getattr(tokenizer, "chat_template", None) or QWEN2_5_VL_CHAT_TEMPLATE
    return RexOmniProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


_REGISTERED = False


def register_processor() -> None:
    """Let ``AutoProcessor`` resolve the class name ``RexOmniProcessor`` written in saved folders.

    The mapping is keyed by a name of our own rather than by ``Qwen2_5_VLConfig``, so plain
    Qwen2.5-VL folders keep loading with transformers' own processor.
    """
    global _REGISTERED
    if not _REGISTERED:
        AutoProcessor.register("rexomni", RexOmniProcessor, exist_ok=True)
        _REGISTERED = True


register_processor()
