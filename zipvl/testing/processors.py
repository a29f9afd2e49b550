"""Offline tokenizers, image processors and processors for the tiny models.

Image processors are the PIL-backend classes (`*ImageProcessorPil`: no
torchvision needed) at small resolutions, so an image is tens of tokens.
The processors of the video-capable families (Qwen2-VL, Qwen2.5-VL,
LLaVA-NeXT-Video, LLaVA-OneVision) are built image-only: their stock
constructors want a video processor, which needs torchvision, and reject
`video_processor=None`. So we subclass them with an `__init__` that has no
video processor argument (`*ImageOnlyProcessor`); such a processor reads video
as frames (images), and `pixel_values_videos` can be passed to the model
directly. Saved checkpoints still name the stock class, like real ones, and
carry the stock video processor's config (`video_configs`), so that with
torchvision the stock processor loads them and reads video; `load_processor`
loads any of them image-only.
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
    LlavaNextVideoProcessor,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
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
    LLAVA_ONEVISION_ASPECT_RATIO,
    LLAVA_ONEVISION_GRID_PINPOINTS,
    PATCH_SIZE,
    QWEN_MERGE_SIZE,
    QWEN_TEMPORAL_PATCH_SIZE,
    SIGLIP_IMAGE_SIZE,
    SUPPORTED_FAMILIES,
    TEXT_FAMILIES,
)
from zipvl.testing.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, build_tokenizer

# Qwen2-VL resizes each image so both sides are multiples of 16 px (patch 8 x
# merge 2) and its area lies in [32^2, 64^2] pixels: 4 to 16 image tokens.
QWEN_MIN_PIXELS = 32 * 32
QWEN_MAX_PIXELS = 64 * 64
# SigLIP's normalization, which the published LLaVA-OneVision processors use.
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


class _RejectsVideo:
    """Raise on `videos=` instead of the stock behaviour without a video processor, which
    drops them silently and leaves one unexpanded placeholder per video."""

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is not None:
            raise ValueError(
                f"{type(self).__name__} is image-only (its stock processor's video processor "
                "needs torchvision): pass video frames as images, or pixel_values_videos to the "
                "model yourself (zipvl.testing.video_inputs)")
        return super().__call__(images=images, text=text, audio=audio, **kwargs)


# The pipeline's own copies live in ``pipeline/families.py``: zipvl never imports
# pipeline, and the pipeline imports nothing from zipvl.testing but the tiny presets.
class Qwen2VLImageOnlyProcessor(_RejectsVideo, Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor (which would need torchvision).

    The sub-processors are read from `__init__`'s signature, so dropping the
    `video_processor` argument makes construction, `save_pretrained` and
    `from_pretrained` image-only; everything else (image token expansion,
    `mm_token_type_ids`, chat template) is inherited.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(_RejectsVideo, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (see `Qwen2VLImageOnlyProcessor`)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class LlavaOnevisionImageOnlyProcessor(_RejectsVideo, LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` without a video processor (see `Qwen2VLImageOnlyProcessor`).

    Its own arguments are spelled out: `to_dict` (so `save_pretrained`) only
    writes the fields `__init__`'s signature names.
    """

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token=IMAGE_TOKEN,
                 video_token=VIDEO_TOKEN, vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor, tokenizer, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy,
                         chat_template=chat_template, image_token=image_token,
                         video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs)


class LlavaNextVideoImageOnlyProcessor(_RejectsVideo, LlavaNextVideoProcessor):
    """`LlavaNextVideoProcessor` without a video processor (see `Qwen2VLImageOnlyProcessor`).

    The stock `__init__` hands its sub-processors on positionally with the video
    processor first, which would shift them by one slot here; so this one sets
    the stock fields itself (as `LlavaNextVideoProcessor.__init__` does) and
    calls `ProcessorMixin.__init__` with the two sub-processors it has. Its
    arguments are spelled out: `to_dict` (so `save_pretrained`) only writes the
    fields `__init__`'s signature names.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, patch_size=None,
                 vision_feature_select_strategy=None, video_token=VIDEO_TOKEN,
                 image_token=IMAGE_TOKEN, num_additional_image_tokens=0, **kwargs):
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = getattr(tokenizer, "image_token", image_token)
        self.video_token = getattr(tokenizer, "video_token", video_token)
        self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.video_token))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# Model type -> image-only processor class, for checkpoints whose stock
# processor would need a video processor.
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "llava_next_video": LlavaNextVideoImageOnlyProcessor,
    "llava_onevision": LlavaOnevisionImageOnlyProcessor,
}
# What a real checkpoint's processor_config.json names for those model types.
STOCK_PROCESSOR_NAMES: dict[str, str] = {
    "qwen2_vl": Qwen2VLProcessor.__name__,
    "qwen2_5_vl": Qwen2_5_VLProcessor.__name__,
    "llava_next_video": LlavaNextVideoProcessor.__name__,
    "llava_onevision": LlavaOnevisionProcessor.__name__,
}


def load_processor(path: str | os.PathLike) -> ProcessorMixin | PreTrainedTokenizerBase:
    """Load the processor (vision models) or tokenizer (text models) of a checkpoint.

    Works without torchvision: Qwen2-VL / Qwen2.5-VL / LLaVA-NeXT-Video /
    LLaVA-OneVision checkpoints (tiny or real) load image-only; everything else goes through `AutoProcessor` /
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


def _llava_onevision_image_processor() -> LlavaOnevisionImageProcessorPil:
    return LlavaOnevisionImageProcessorPil(
        size={"height": SIGLIP_IMAGE_SIZE, "width": SIGLIP_IMAGE_SIZE},
        image_grid_pinpoints=LLAVA_ONEVISION_GRID_PINPOINTS,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
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
    if family == "llava_onevision":
        return LlavaOnevisionImageOnlyProcessor(
            image_processor=_llava_onevision_image_processor(),
            tokenizer=tokenizer,
            # SigLIP has no CLS: every patch of a view is an image token.
            num_image_tokens=(SIGLIP_IMAGE_SIZE // PATCH_SIZE) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio=LLAVA_ONEVISION_ASPECT_RATIO,
            chat_template=chat_template,
        )
    if family in ("llava", "llava_next", "llava_next_video"):
        processor_class = {
            "llava": LlavaProcessor,
            "llava_next": LlavaNextProcessor,
            "llava_next_video": LlavaNextVideoImageOnlyProcessor,
        }[family]
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
