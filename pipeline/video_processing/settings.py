"""A checkpoint's video preprocessing settings, resolved as the stock video processor resolves them.

Mirrors ``transformers.video_processing_utils.BaseVideoProcessor.from_pretrained``
(identical in transformers 5.23 to 5.25), which cannot run here because
``BaseVideoProcessor`` needs torchvision:

1. ``BaseVideoProcessor.get_video_processor_dict``: the ``video_processor`` entry of a
   nested ``processor_config.json``, else ``video_preprocessor_config.json``, else the
   legacy ``preprocessor_config.json`` (a file path is read as the config itself);
2. ``from_dict`` -> ``__init__``: Qwen2-VL's ``min_pixels`` / ``max_pixels`` become
   ``size["shortest_edge"]`` / ``size["longest_edge"]`` (``Qwen2VLVideoProcessor.__init__``);
3. ``_set_attributes``: a key that is absent takes the stock class's default (one given as
   null stays null: ``ImageProcessingMixin.__init__`` set it first),
   and ``_standardize_kwargs`` turns ``size`` / ``crop_size`` into size dicts
   (``get_size_dict``) and mean/std lists into tuples.

The class defaults below are copied from ``Qwen2VLVideoProcessor`` (Qwen2.5-VL uses the
same class), ``LlavaNextVideoVideoProcessor`` and ``LlavaOnevisionVideoProcessor``; the
parity test compares every field with the stock processor where torchvision imports.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.utils import (
    IMAGE_PROCESSOR_NAME,
    PROCESSOR_NAME,
    VIDEO_PROCESSOR_NAME,
    cached_file,
)
from transformers.utils.hub import resolve_revision

# Which stock video processor each family's checkpoints load (AutoVideoProcessor's mapping).
STOCK_VIDEO_PROCESSORS: dict[str, str] = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "llava_next_video": "LlavaNextVideoVideoProcessor",
    "llava_onevision": "LlavaOnevisionVideoProcessor",
}
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# VideoProcessorMixin / BaseImageProcessor defaults, under every class's own.
_BASE_DEFAULTS: dict[str, Any] = {
    "default_to_square": True,
    "rescale_factor": 1 / 255,
    "return_metadata": False,
}
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "Qwen2VLVideoProcessor": {
        "resample": PILImageResampling.BICUBIC,
        "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_frames": 4,
        "max_frames": 768,
        "do_sample_frames": False,
        "cap_pixels_per_frame": None,
        "max_video_tokens": 128000,
    },
    "LlavaNextVideoVideoProcessor": {
        "resample": PILImageResampling.BICUBIC,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "size": {"shortest_edge": 224},
        "default_to_square": False,
        "crop_size": {"height": 224, "width": 224},
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    },
    "LlavaOnevisionVideoProcessor": {
        "resample": PILImageResampling.BICUBIC,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "size": {"height": 384, "width": 384},
        "rescale_factor": 1 / 255,
        "default_to_square": False,
        "crop_size": None,
        "do_resize": True,
        "do_center_crop": None,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    },
}


@dataclass(frozen=True)
class VideoProcessingSettings:
    """What the stock video processor of ``family`` would hold after ``from_pretrained``.

    Field names are the stock attribute names; ``size`` / ``crop_size`` are plain size
    dicts. The Qwen-only fields are ``None`` for the LLaVA families.
    """

    family: str
    stock_class: str
    do_convert_rgb: bool | None
    do_resize: bool | None
    size: dict[str, int] | None
    default_to_square: bool | None
    resample: int | None
    do_center_crop: bool | None
    crop_size: dict[str, int] | None
    do_rescale: bool | None
    rescale_factor: float | None
    do_normalize: bool | None
    image_mean: tuple[float, ...] | float | None
    image_std: tuple[float, ...] | float | None
    do_sample_frames: bool | None
    fps: float | None
    num_frames: int | None
    return_metadata: bool | None
    patch_size: int | None = None
    temporal_patch_size: int | None = None
    merge_size: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    cap_pixels_per_frame: bool | None = None
    max_video_tokens: int | None = None

    @property
    def is_qwen(self) -> bool:
        return self.family in QWEN_FAMILIES


_COMMON_KEYS = (
    "do_convert_rgb", "do_resize", "size", "default_to_square", "resample", "do_center_crop",
    "crop_size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
    "do_sample_frames", "fps", "num_frames", "return_metadata",
)
_QWEN_KEYS = (
    "patch_size", "temporal_patch_size", "merge_size", "min_frames", "max_frames",
    "cap_pixels_per_frame", "max_video_tokens",
)


def with_video_token_cap(settings: VideoProcessingSettings,
                         max_video_tokens: int | None) -> VideoProcessingSettings:
    """Qwen `settings` spreading a budget of `max_video_tokens` over a clip's frames (the
    stock ``cap_pixels_per_frame``); None: no budget, each frame keeps its own limit."""
    if max_video_tokens is None:
        return dataclasses.replace(settings, cap_pixels_per_frame=False)
    return dataclasses.replace(settings, cap_pixels_per_frame=True, max_video_tokens=max_video_tokens)


def settings_from_dict(family: str, config: dict[str, Any]) -> VideoProcessingSettings:
    """The settings a stock ``family`` video processor built from ``config`` (a loaded
    video processor dict) would hold."""
    if family not in STOCK_VIDEO_PROCESSORS:
        raise ValueError(f"no video processor for model type {family!r}; video families: "
                         f"{', '.join(STOCK_VIDEO_PROCESSORS)}")
    stock_class = STOCK_VIDEO_PROCESSORS[family]
    named = config.get("video_processor_type")
    if named is not None and named != stock_class:
        # AutoVideoProcessor would build `named`, whose behaviour we do not mirror.
        raise ValueError(f"the checkpoint's video processor is {named}, but {family} checkpoints "
                         f"are processed here as {stock_class} does")
    config = dict(config)
    if family in QWEN_FAMILIES:
        # Qwen2VLVideoProcessor.__init__: legacy pixel limits override the size dict.
        size = config.pop("size", None)
        size = dict(_CLASS_DEFAULTS[stock_class]["size"]) if size is None else dict(size)
        if (min_pixels := config.pop("min_pixels", None)) is not None:
            size["shortest_edge"] = min_pixels
            size.pop("min_pixels", None)
        if (max_pixels := config.pop("max_pixels", None)) is not None:
            size["longest_edge"] = max_pixels
            size.pop("max_pixels", None)
        config["size"] = size
    defaults = {**_BASE_DEFAULTS, **_CLASS_DEFAULTS[stock_class]}
    keys = _COMMON_KEYS + (_QWEN_KEYS if family in QWEN_FAMILIES else ())
    # ImageProcessingMixin.__init__ sets every given key first, so a null one stays null;
    # only an absent key takes the class default (_set_attributes).
    values = {key: config[key] if key in config else defaults.get(key) for key in keys}
    if values["size"] is not None:
        values["size"] = get_size_dict(size=values["size"], default_to_square=values["default_to_square"])
    if values["crop_size"] is not None:
        values["crop_size"] = get_size_dict(values["crop_size"], param_name="crop_size")
    for key in ("image_mean", "image_std"):
        if isinstance(values[key], list):
            values[key] = tuple(values[key])
    return VideoProcessingSettings(family=family, stock_class=stock_class, **values)


def read_video_processor_dict(location: str | os.PathLike, hub_kwargs: dict[str, Any] | None = None
                              ) -> dict[str, Any]:
    """The video processor dict of a checkpoint (local folder, config file or hub id), found
    as ``BaseVideoProcessor.get_video_processor_dict`` finds it. ``hub_kwargs`` are the hub
    arguments of ``from_pretrained`` (``revision``, ``local_files_only``, ``token``,
    ``cache_dir``, ``subfolder``, ...)."""
    hub_kwargs = dict(hub_kwargs or {})
    location = str(location)
    if os.path.isfile(location):
        return _read_json(location)
    lookup = {key: hub_kwargs[key] for key in (
        "cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder",
    ) if hub_kwargs.get(key) is not None}
    # As the stock loader: one revision for every file (a no-op for a local folder).
    revision = resolve_revision(location, lookup.get("revision"), token=lookup.get("token"),
                                local_files_only=lookup.get("local_files_only", False),
                                cache_dir=lookup.get("cache_dir"))
    if revision is not None:
        lookup["revision"] = revision

    def find(file_name: str) -> str | None:
        return cached_file(location, filename=file_name, _raise_exceptions_for_missing_entries=False,
                           **lookup)

    processor_file = find(PROCESSOR_NAME)
    if processor_file is not None:
        nested = _read_json(processor_file).get("video_processor")
        if nested is not None:
            return nested
    for file_name in (VIDEO_PROCESSOR_NAME, IMAGE_PROCESSOR_NAME):
        found = find(file_name)
        if found is not None:
            return _read_json(found)
    raise OSError(f"no video processor config in {location}: none of {PROCESSOR_NAME} (with a "
                  f"video_processor entry), {VIDEO_PROCESSOR_NAME} or {IMAGE_PROCESSOR_NAME}")


def load_video_settings(location: str | os.PathLike, family: str,
                        hub_kwargs: dict[str, Any] | None = None) -> VideoProcessingSettings:
    """The video preprocessing settings of the ``family`` checkpoint at ``location``."""
    return settings_from_dict(family, read_video_processor_dict(location, hub_kwargs))


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
