"""The model families the pipeline runs: the one list, and what differs between them.

A family is a Hugging Face ``model_type``. Everything else in the pipeline that
depends on the family asks this registry: which types a job may name (``presets``,
``spec``, ``preflight``), whether ``max_image_tokens`` applies (``prompts``), and
which processor to load where the stock one cannot be built (``model_runner``).
Every family goes through ``zipvl.enable`` (a test checks each is in
``zipvl.SUPPORTED_MODEL_TYPES``) and reads video as frames (a multi-image prompt).

Qwen2-VL and Qwen2.5-VL's stock processors also build a video processor, which
needs torchvision; without it they fail to construct even for images. Their
image-only subclasses drop that one argument from ``__init__`` (transformers reads
the sub-processors from its signature), so construction, ``from_pretrained`` and
``save_pretrained`` work without torchvision and everything else is inherited.
LLaVA-NeXT-Video's and LLaVA-OneVision's get the same treatment (NeXT-Video's stock
``__init__`` passes the video processor first, so its subclass sets the stock fields
itself). Where torchvision is missing, ``pipeline.video_processing`` gives these
image-only processors a video processor of its own. ``zipvl.testing`` keeps its own
copies for its tiny checkpoints: ``zipvl`` never imports ``pipeline``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from transformers import (
    LlavaNextVideoProcessor,
    LlavaOnevisionProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (see ``Qwen2VLImageOnlyProcessor``)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class LlavaNextVideoImageOnlyProcessor(LlavaNextVideoProcessor):
    """``LlavaNextVideoProcessor`` without a video processor. The stock ``__init__`` hands its
    sub-processors on positionally, video processor first, which would shift them by one
    here; so this sets the stock fields as that ``__init__`` does and calls
    ``ProcessorMixin.__init__`` with the two it has. The arguments are spelled out because
    ``to_dict`` (so ``save_pretrained``) writes only what the signature names."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, patch_size=None,
                 vision_feature_select_strategy=None, video_token="<video>", image_token="<image>",
                 num_additional_image_tokens=0, **kwargs):
        self.patch_size = patch_size
        self.num_additional_image_tokens = num_additional_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = tokenizer.image_token if hasattr(tokenizer, "image_token") else image_token
        self.video_token = tokenizer.video_token if hasattr(tokenizer, "video_token") else video_token
        self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.video_token))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without a video processor (its arguments spelled out, see
    ``LlavaNextVideoImageOnlyProcessor``)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor, tokenizer, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy,
                         chat_template=chat_template, image_token=image_token,
                         video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs)


@dataclass(frozen=True)
class ModelFamily:
    """What the pipeline needs to know about one model family."""

    model_type: str
    # max_image_tokens caps its visual tokens (its processor resizes to a pixel budget;
    # LLaVA-1.5 has a fixed count and LLaVA-NeXT's follows its grid pinpoints).
    caps_image_tokens: bool = False
    # Loaded instead of the stock processor when torchvision does not import (then with
    # the torchvision-free video processor of pipeline.video_processing attached).
    image_only_processor: type[ProcessorMixin] | None = None
    # It reads video as video ({"type": "video"} content and its own video processor);
    # otherwise a video's frames reach it as images.
    native_video: bool = False
    # Its video frame count must be a multiple of this (Qwen2-VL's temporal patches
    # take frames in pairs; the processor would pad an odd count with a copy).
    video_frame_multiple: int = 1


FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (
    ModelFamily("llava"),
    ModelFamily("llava_next"),
    ModelFamily("llava_next_video", image_only_processor=LlavaNextVideoImageOnlyProcessor,
                native_video=True),
    ModelFamily("llava_onevision", image_only_processor=LlavaOnevisionImageOnlyProcessor,
                native_video=True),
    ModelFamily("qwen2_vl", caps_image_tokens=True, image_only_processor=Qwen2VLImageOnlyProcessor,
                native_video=True, video_frame_multiple=2),
    ModelFamily("qwen2_5_vl", caps_image_tokens=True,
                image_only_processor=Qwen2_5_VLImageOnlyProcessor, native_video=True,
                video_frame_multiple=2),
)}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)
# Model type -> the processor loaded instead of the stock one where torchvision does not
# import: every family whose stock processor builds a video processor.
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    name: family.image_only_processor for name, family in FAMILIES.items()
    if family.image_only_processor is not None}


def reads_native_video(mode: str, family: str) -> bool:
    """Whether ``video.mode`` (``auto``, ``native``, ``frames``) means native video for
    `family`; ``ValueError`` where ``native`` is asked of an image-only family."""
    if mode == "frames":
        return False
    if mode == "native" and not FAMILIES[family].native_video:
        raise ValueError(f"the {family} family reads images only: use video.mode frames (or auto)")
    return FAMILIES[family].native_video


@functools.cache
def torchvision_imports() -> bool:
    """Whether torchvision imports here (installed is not enough: a build for another
    torch fails at import)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True
