"""Offline tokenizers, image processors and processors for the tiny models.

Image processors are the PIL-backend classes (`*ImageProcessorPil`: no
torchvision needed) at small resolutions, so an image is tens of tokens.
The Qwen2-VL / Qwen2.5-VL processors are built image-only: their stock
constructor wants a video processor, which needs torchvision, and rejects
`video_processor=None`. So we subclass them with an `__init__` that has no
video processor argument (`Qwen2VLImageOnlyProcessor`,
`Qwen2_5_VLImageOnlyProcessor`); video is fed as frames, i.e. images. Saved checkpoints still name the stock class, like
real ones; `load_processor` loads either kind image-only.
"""

from __future__ import annotations

import os

from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from zipvl.testing.chat_templates import CHAT_TEMPLATES
from zipvl.testing.configs import (
    CLIP_IMAGE_SIZE,
    LLAVA_NEXT_GRID_PINPOINTS,
    PATCH_SIZE,
    QWEN_MERGE_SIZE,
    QWEN_TEMPORAL_PATCH_SIZE,
    SUPPORTED_FAMILIES,
    TEXT_FAMILIES,
)
from zipvl.testing.tokenizer import build_tokenizer

# Qwen2-VL resizes each image so both sides are multiples of 16 px (patch 8 x
# merge 2) and its area lies in [32^2, 64^2] pixels: 4 to 16 image tokens.
QWEN_MIN_PIXELS = 32 * 32
QWEN_MAX_PIXELS = 64 * 64


# The pipeline's own copies live in ``pipeline/families.py``: zipvl never imports
# pipeline, and the pipeline imports nothing from zipvl.testing but the tiny presets.
class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor (which would need torchvision).

    The sub-processors are read from `__init__`'s signature, so dropping the
    `video_processor` argument makes construction, `save_pretrained` and
    `from_pretrained` image-only; everything else (image token expansion,
    `mm_token_type_ids`, chat template) is inherited.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (see `Qwen2VLImageOnlyProcessor`)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


# Model type -> image-only processor class, for checkpoints whose stock
# processor would need a video processor.
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
}
# What a real checkpoint's processor_config.json names for those model types.
STOCK_PROCESSOR_NAMES: dict[str, str] = {
    "qwen2_vl": Qwen2VLProcessor.__name__,
    "qwen2_5_vl": Qwen2_5_VLProcessor.__name__,
}


def load_processor(path: str | os.PathLike) -> ProcessorMixin | PreTrainedTokenizerBase:
    """Load the processor (vision models) or tokenizer (text models) of a checkpoint.

    Works without torchvision: Qwen2-VL / Qwen2.5-VL checkpoints (tiny or real)
    load image-only; everything else goes through `AutoProcessor` /
    `AutoTokenizer`.
    """
    config = AutoConfig.from_pretrained(path)
    if config.model_type in IMAGE_ONLY_PROCESSORS:
        return IMAGE_ONLY_PROCESSORS[config.model_type].from_pretrained(path)
    if hasattr(config, "vision_config"):
        return AutoProcessor.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _clip_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )


def _llava_next_image_processor() -> LlavaNextImageProcessorPil:
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS,
    )


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=QWEN_TEMPORAL_PATCH_SIZE,
        merge_size=QWEN_MERGE_SIZE,
    )


def build_processor(family: str) -> PreTrainedTokenizerFast | ProcessorMixin:
    """The tokenizer (text families) or processor (vision families) of `family`."""
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
    chat_template = CHAT_TEMPLATES[family]
    tokenizer = build_tokenizer(chat_template, qwen_style=family.startswith("qwen"))
    if family in TEXT_FAMILIES:
        return tokenizer
    if family in ("llava", "llava_next"):
        processor_class = LlavaProcessor if family == "llava" else LlavaNextProcessor
        image_processor = (
            _clip_image_processor() if family == "llava" else _llava_next_image_processor()
        )
        return processor_class(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            # CLIP prepends a CLS embedding, which the "default" strategy drops again.
            num_additional_image_tokens=1,
            chat_template=chat_template,
        )
    processor_class = (
        Qwen2VLImageOnlyProcessor if family == "qwen2_vl" else Qwen2_5_VLImageOnlyProcessor
    )
    return processor_class(
        image_processor=_qwen_image_processor(),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )
