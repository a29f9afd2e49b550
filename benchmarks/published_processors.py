"""The four real video checkpoints' preprocessing, as published, built offline into processors.

No checkpoint can be downloaded here, so the settings each real checkpoint ships are
written out below, each dict under the file it comes from as published on the Hugging
Face hub (``preprocessor_config.json``, ``video_preprocessor_config.json``,
``processor_config.json``, ``config.json``); a key a file leaves out takes the stock
class's default, as ``from_pretrained`` would give it. ``build_processor`` turns them
into the processor the pipeline would load for that checkpoint without torchvision:
the family's image-only processor (``pipeline.image_only_processors``) with
the stock ``*ImageProcessorPil`` image processor, ``zipvl.testing``'s tokenizer and chat
template (it holds ``<image>``, ``<video>`` and Qwen's pad tokens; only the placeholder
counts matter, not the text tokens), and our video processor built from the video
settings with ``pipeline.video_processing.settings_from_dict`` (the path
``attach_video_processor`` takes). Token counts then come from transformers' own
processor code (``replace_image_token`` / ``replace_video_token``, the image
processors' grids), not from a formula of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import (
    LlavaNextImageProcessorPil,
    LlavaOnevisionImageProcessorPil,
    ProcessorMixin,
    Qwen2VLImageProcessorPil,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from pipeline.image_only_processors import IMAGE_ONLY_PROCESSORS
from pipeline.video_processing import LlavaVideoProcessor, QwenVLVideoProcessor, settings_from_dict
from zipvl.testing.chat_templates import CHAT_TEMPLATES
from zipvl.testing.tokenizer import build_tokenizer

BICUBIC = 3  # PILImageResampling.BICUBIC, as the files store it
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class PublishedCheckpoint:
    """What one real checkpoint publishes about its preprocessing (see the module docstring)."""

    name: str
    family: str
    image_processor: dict[str, Any]  # preprocessor_config.json
    processor: dict[str, Any]  # processor_config.json (the processor's own fields)
    video_processor: dict[str, Any]  # video_preprocessor_config.json ({} = stock class defaults)
    model: dict[str, Any] = field(default_factory=dict)  # config.json fields the counts depend on
    sources: dict[str, str] = field(default_factory=dict)  # where each value comes from

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "preprocessor_config": self.image_processor,
                "processor_config": self.processor, "video_preprocessor_config": self.video_processor,
                "config": self.model, "sources": self.sources}


_QWEN_IMAGE = {
    # preprocessor_config.json of Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct,
    # as published: legacy pixel limits (Qwen2VLImageProcessor.__init__ turns them into
    # size = {shortest_edge: min_pixels, longest_edge: max_pixels}).
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
    "resample": BICUBIC,
}
_QWEN_SOURCES = {
    "image": "preprocessor_config.json as published (min_pixels 3136, max_pixels 12845056, patch 14, "
             "merge 2, temporal 2)",
    "video": "no video values written here: the stock Qwen2VLVideoProcessor class defaults "
             "(size 128*28*28 .. 768*28*28 pixels per frame, patch 14, merge 2, temporal 2)",
    "model": "config.json as published: vision_config.spatial_merge_size 2, patch_size 14, "
             "temporal_patch_size 2",
}

CHECKPOINTS: dict[str, PublishedCheckpoint] = {checkpoint.name: checkpoint for checkpoint in (
    PublishedCheckpoint(
        name="Qwen/Qwen2-VL-7B-Instruct", family="qwen2_vl",
        image_processor=_QWEN_IMAGE, processor={}, video_processor={},
        model={"vision_config": {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}},
        sources=_QWEN_SOURCES),
    PublishedCheckpoint(
        name="Qwen/Qwen2.5-VL-7B-Instruct", family="qwen2_5_vl",
        image_processor=_QWEN_IMAGE, processor={}, video_processor={},
        model={"vision_config": {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}},
        sources=_QWEN_SOURCES),
    PublishedCheckpoint(
        name="llava-hf/LLaVA-NeXT-Video-7B-hf", family="llava_next_video",
        image_processor={
            # preprocessor_config.json as published (LlavaNextImageProcessor): CLIP ViT-L/336.
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
            "do_center_crop": True,
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD),
            "resample": BICUBIC,
        },
        processor={
            # processor_config.json as published.
            "patch_size": 14,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,  # CLIP's CLS, dropped again by "default"
        },
        video_processor={
            # video_preprocessor_config.json as published (LlavaNextVideoVideoProcessor): 336 crop.
            "video_processor_type": "LlavaNextVideoVideoProcessor",
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
            "do_center_crop": True,
        },
        model={"spatial_pool_stride": 2, "spatial_pool_mode": "average",
               "vision_config": {"image_size": 336, "patch_size": 14}},
        sources={"image": "preprocessor_config.json as published",
                 "processor": "processor_config.json as published",
                 "video": "video_preprocessor_config.json as published (336 px shortest edge, 336 crop)",
                 "model": "config.json as published: spatial_pool_stride 2 (the processor's "
                          "replace_video_token divides by 4 for it)"}),
    PublishedCheckpoint(
        name="llava-hf/llava-onevision-qwen2-7b-ov-hf", family="llava_onevision",
        image_processor={
            # preprocessor_config.json as published (LlavaOnevisionImageProcessor): SigLIP 384,
            # anyres over every grid of 1..6 x 1..6 views of 384 px.
            "size": {"height": 384, "width": 384},
            "image_grid_pinpoints": [[384 * rows, 384 * columns] for rows in range(1, 7)
                                     for columns in range(1, 7)],
            "image_mean": SIGLIP_MEAN,
            "image_std": SIGLIP_STD,
            "resample": BICUBIC,
            "do_pad": True,
        },
        processor={
            # processor_config.json as published: SigLIP has no CLS, 27 x 27 = 729 patches a view.
            "num_image_tokens": 729,
            "vision_feature_select_strategy": "full",
            "vision_aspect_ratio": "anyres_max_9",
        },
        video_processor={
            # video_preprocessor_config.json as published (LlavaOnevisionVideoProcessor): 384 x 384,
            # SigLIP statistics.
            "video_processor_type": "LlavaOnevisionVideoProcessor",
            "size": {"height": 384, "width": 384},
            "image_mean": SIGLIP_MEAN,
            "image_std": SIGLIP_STD,
        },
        model={"vision_aspect_ratio": "anyres_max_9",
               "vision_config": {"image_size": 384, "patch_size": 14}},
        sources={"image": "preprocessor_config.json as published (the 384..2304 pinpoint grid)",
                 "processor": "processor_config.json as published",
                 "video": "video_preprocessor_config.json as published (384 x 384)",
                 "model": "config.json as published; the model pools each frame's 27 x 27 "
                          "patches 2 x 2 with ceil (14 x 14) and adds one newline per video"}),
)}


def _image_processor(checkpoint: PublishedCheckpoint):
    classes = {"qwen2_vl": Qwen2VLImageProcessorPil, "qwen2_5_vl": Qwen2VLImageProcessorPil,
               "llava_next_video": LlavaNextImageProcessorPil,
               "llava_onevision": LlavaOnevisionImageProcessorPil}
    return classes[checkpoint.family](**checkpoint.image_processor)


def build_processor(name: str) -> ProcessorMixin:
    """The processor of the real checkpoint ``name`` as the pipeline loads it without torchvision."""
    checkpoint = CHECKPOINTS[name]
    family = checkpoint.family
    chat_template = CHAT_TEMPLATES[family]
    tokenizer = build_tokenizer(chat_template, qwen_style=family.startswith("qwen"))
    processor = IMAGE_ONLY_PROCESSORS[family](image_processor=_image_processor(checkpoint),
                                              tokenizer=tokenizer, chat_template=chat_template,
                                              **checkpoint.processor)
    settings = settings_from_dict(family, checkpoint.video_processor)
    processor.video_processor = (QwenVLVideoProcessor(settings) if settings.is_qwen
                                 else LlavaVideoProcessor(settings))
    return processor


def placeholder_ids(processor: ProcessorMixin) -> dict[str, int]:
    """The image and video placeholder token ids of ``processor``."""
    return {"image": processor.image_token_id, "video": processor.video_token_id}
