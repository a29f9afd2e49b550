"""One call's options: keyword arguments over the checkpoint's settings.

Mirrors ``VideoProcessorMixin.preprocess`` (``transformers.video_processing_utils``):
every known option a call leaves out takes the processor's value (``setdefault``: one
passed as ``None`` stays ``None``), ``size`` / ``crop_size`` become size dicts, and Qwen's deprecated call-time
``min_pixels`` / ``max_pixels`` override ``size`` (``Qwen2VLVideoProcessor._standardize_kwargs``).
A call's ``max_video_tokens`` is the budget where it is given, as in transformers 5.25's
``Qwen2VLVideoProcessor.resize`` (5.23 and 5.24 read only ``self.max_video_tokens``; the
pipeline sets the processor's value, never a call's, so its jobs run alike on all three). Unlike the stock processor, an unknown option is an error rather than a logged warning,
and so is asking to sample frames: frames reach the processor already sampled.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from transformers.image_processing_utils import get_size_dict

from pipeline.video_processing.settings import VideoProcessingSettings

# Options with no setting behind them: they default to None.
_CALL_ONLY = ("video_metadata", "device", "return_tensors", "data_format", "input_data_format", "do_pad")
_QWEN_CALL_ONLY = ("min_pixels", "max_pixels")


def resolve_call_options(settings: VideoProcessingSettings, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of one call: ``kwargs`` where given, else ``settings``."""
    known = {field.name for field in fields(settings)} - {"family", "stock_class"}
    if not settings.is_qwen:
        known -= {"patch_size", "temporal_patch_size", "merge_size", "min_frames", "max_frames",
                  "cap_pixels_per_frame", "max_video_tokens"}
    allowed = known | set(_CALL_ONLY) | (set(_QWEN_CALL_ONLY) if settings.is_qwen else set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unknown video processing options for {settings.family}: {', '.join(unknown)}")
    options = {name: kwargs.get(name) for name in allowed}
    for name in known:
        if name not in kwargs:
            options[name] = getattr(settings, name)
    if options["do_sample_frames"]:
        raise ValueError("frames are sampled when the video is decoded; call the video processor with "
                         "do_sample_frames=False")
    if options["input_data_format"] not in (None, "channels_last", "channels_first"):
        raise ValueError(f"input_data_format {options['input_data_format']!r} is not supported")
    size = options["size"]
    if settings.is_qwen and (options["min_pixels"] is not None or options["max_pixels"] is not None):
        size = dict(size) if isinstance(size, dict) else {}
        if options["min_pixels"] is not None:
            size["shortest_edge"] = options["min_pixels"]
        if options["max_pixels"] is not None:
            size["longest_edge"] = options["max_pixels"]
    if size is not None:
        size = get_size_dict(size=dict(size) if isinstance(size, dict) else size,
                             default_to_square=options["default_to_square"])
    options["size"] = {key: value for key, value in size.items() if value is not None} if size else size
    if options["crop_size"] is not None:
        crop_size = options["crop_size"]
        crop_size = get_size_dict(dict(crop_size) if isinstance(crop_size, dict) else crop_size,
                                  param_name="crop_size")
        options["crop_size"] = {key: value for key, value in crop_size.items() if value is not None}
    if settings.is_qwen and options["cap_pixels_per_frame"] is None:
        # Qwen2VLVideoProcessor._preprocess: unset means off (it warns that this will change).
        options["cap_pixels_per_frame"] = False
    return options
