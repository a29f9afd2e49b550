"""Tiny random-weight models of every supported family, built fully offline.

For tests and demos: no weights, tokenizers or image processors are ever
downloaded. See `models.build_tiny_model`, `models.tiny_model_path` and
`inputs.build_inputs`.
"""

from zipvl.testing.configs import (
    SUPPORTED_FAMILIES,
    TEXT_FAMILIES,
    VIDEO_FAMILIES,
    VISION_FAMILIES,
    tiny_config,
)
from zipvl.testing.inputs import build_inputs, chat_messages, make_test_image
from zipvl.testing.models import (
    MODEL_CLASSES,
    build_tiny_model,
    default_cache_dir,
    save_tiny_model,
    tiny_model_path,
)
from zipvl.testing.processors import (
    LlavaNextVideoImageOnlyProcessor,
    LlavaOnevisionImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    build_processor,
    load_processor,
)
from zipvl.testing.video_configs import video_processor_config

__all__ = [
    "LlavaNextVideoImageOnlyProcessor",
    "LlavaOnevisionImageOnlyProcessor",
    "MODEL_CLASSES",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "SUPPORTED_FAMILIES",
    "TEXT_FAMILIES",
    "VIDEO_FAMILIES",
    "VISION_FAMILIES",
    "build_inputs",
    "build_processor",
    "build_tiny_model",
    "chat_messages",
    "default_cache_dir",
    "load_processor",
    "make_test_image",
    "save_tiny_model",
    "tiny_config",
    "tiny_model_path",
    "video_processor_config",
]
