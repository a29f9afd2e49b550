"""Image-only processors: the stock processors of the families that also build a video
processor (which needs torchvision), without that one argument.

Qwen2-VL and Qwen2.5-VL's stock processors also build a video processor; without
torchvision they fail to construct even for images. Their image-only subclasses drop
that one argument from ``__init__`` (transformers reads the sub-processors from its
signature), so construction, ``from_pretrained`` and ``save_pretrained`` work without
torchvision and everything else is inherited. LLaVA-NeXT-Video's and LLaVA-OneVision's
get the same treatment (NeXT-Video's stock ``__init__`` passes the video processor first,
so its subclass sets the stock fields itself). Where torchvision is missing,
``pipeline.video_processing`` gives them a video processor of its own.

Kept apart from the registry (``pipeline.families`` names these classes) because
importing transformers' processors costs seconds: the driver and the decode tasks,
which only read the registry, never pay it.
"""

from __future__ import annotations

from transformers import (
    LlavaNextVideoProcessor,
    LlavaOnevisionProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)

from pipeline.families import FAMILIES


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


# Model type -> the processor loaded instead of the stock one where torchvision does not
# import: every family the registry gives one.
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    name: globals()[family.image_only_processor] for name, family in FAMILIES.items()
    if family.image_only_processor is not None}
