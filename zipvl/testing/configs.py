"""Configs of the tiny random-weight models, one per supported family.

Every text model has 2 layers, hidden size 64 and grouped-query attention
(4 query heads sharing 2 KV heads, head_dim 16) so GQA code paths are
exercised; vision towers are 2-layer and 32-wide, with 8-pixel patches so
that a small image becomes tens of tokens. Shapes follow the published
configs of Llama/Mistral/Qwen2, Llava-1.5, Llava-NeXT, Qwen2-VL, Qwen2.5-VL,
LLaVA-NeXT-Video (llava-hf/LLaVA-NeXT-Video-7B-hf: Vicuna/Llama and CLIP) and
LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf: Qwen2 and SigLIP),
shrunk.
"""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextVideoConfig,
    LlavaOnevisionConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    SiglipVisionConfig,
)

from zipvl.testing.tokenizer import (
    BOS_TOKEN,
    END_OF_TURN_TOKEN,
    EOS_TOKEN,
    IM_END_TOKEN,
    IMAGE_PAD_TOKEN,
    IMAGE_TOKEN,
    MODEL_VOCAB_SIZE,
    PAD_TOKEN,
    VIDEO_PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    special_token_ids,
)

TEXT_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2")
VISION_FAMILIES: tuple[str, ...] = (
    "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "llava_next_video", "llava_onevision")
# Families whose checkpoints also read video (their real ones ship a video processor).
VIDEO_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "llava_next_video", "llava_onevision")
SUPPORTED_FAMILIES: tuple[str, ...] = TEXT_FAMILIES + VISION_FAMILIES

NUM_LAYERS = 2
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_QUERY_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_QUERY_HEADS
MAX_POSITIONS = 8192
# Random logits at the default 0.02 are nearly flat, so greedy decoding would
# hinge on float noise; a wider init gives clear argmax margins.
INITIALIZER_RANGE = 0.1

# Vision towers.
VISION_HIDDEN_SIZE = 32
VISION_HEADS = 2
PATCH_SIZE = 8
# Llava: CLIP sees a 32 x 32 crop: 4 x 4 patches -> 16 image tokens (CLS dropped).
CLIP_IMAGE_SIZE = 32
# Llava-NeXT: base 32 x 32 view plus up to 2 x 2 tiles of it.
LLAVA_NEXT_GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
# LLaVA-NeXT-Video pools each frame's 4 x 4 patch features 2 x 2 (average, stride 2):
# 4 tokens per 32 x 32 frame.
LLAVA_NEXT_VIDEO_POOL_STRIDE = 2
# LLaVA-OneVision: SigLIP (no CLS) sees 32 x 32 views; the grid includes the base view,
# as the published 384 px grid does. "anyres_max_9" as published: at most 9 views' worth
# of tile features before they are interpolated down.
SIGLIP_IMAGE_SIZE = 32
LLAVA_ONEVISION_GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
LLAVA_ONEVISION_ASPECT_RATIO = "anyres_max_9"
# Qwen2-VL: 2 x 2 patches merge into one token, so factor 16 px.
QWEN_MERGE_SIZE = 2
QWEN_TEMPORAL_PATCH_SIZE = 2
# Qwen2.5-VL windowed attention: 32 px windows (2 x 2 merged tokens).
QWEN2_5_WINDOW_SIZE = 32
# Multimodal RoPE splits head_dim / 2 = 8 frequencies into (time, height, width).
MROPE_SECTION = [2, 3, 3]

# End-of-turn token that each family's chat template writes after a reply.
END_OF_TURN: dict[str, str] = {
    "llama": END_OF_TURN_TOKEN,
    "mistral": EOS_TOKEN,
    "qwen2": IM_END_TOKEN,
    "llava": EOS_TOKEN,
    "llava_next": EOS_TOKEN,
    "qwen2_vl": IM_END_TOKEN,
    "qwen2_5_vl": IM_END_TOKEN,
    "llava_next_video": EOS_TOKEN,
    "llava_onevision": IM_END_TOKEN,
}


def _token_ids(family: str) -> dict[str, int]:
    ids = special_token_ids()
    return {
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": ids[END_OF_TURN[family]],
        "pad_token_id": ids[PAD_TOKEN],
    }


def _decoder_fields(family: str) -> dict:
    return {
        "vocab_size": MODEL_VOCAB_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_QUERY_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": INITIALIZER_RANGE,
        "tie_word_embeddings": False,
        **_token_ids(family),
    }


def _llama_text_config(family: str) -> LlamaConfig:
    return LlamaConfig(
        head_dim=HEAD_DIM,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **_decoder_fields(family),
    )


def _clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=VISION_HIDDEN_SIZE,
        intermediate_size=2 * VISION_HIDDEN_SIZE,
        projection_dim=VISION_HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=VISION_HEADS,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        initializer_range=INITIALIZER_RANGE,
    )


def _siglip_vision_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=VISION_HIDDEN_SIZE,
        intermediate_size=2 * VISION_HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=VISION_HEADS,
        image_size=SIGLIP_IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        # LLaVA-OneVision uses the patch features only, not SigLIP's pooling head.
        vision_use_head=False,
    )


def _qwen2_text_config(family: str) -> Qwen2Config:
    return Qwen2Config(
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        **_decoder_fields(family),
    )


def _qwen_vl_text_fields(family: str) -> dict:
    return {
        **_decoder_fields(family),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": MROPE_SECTION,
        },
        "use_sliding_window": False,
    }


def _qwen_vl_token_fields() -> dict:
    ids = special_token_ids()
    return {
        "image_token_id": ids[IMAGE_PAD_TOKEN],
        "video_token_id": ids[VIDEO_PAD_TOKEN],
        "vision_start_token_id": ids[VISION_START_TOKEN],
        "vision_end_token_id": ids[VISION_END_TOKEN],
    }


def tiny_config(family: str) -> PretrainedConfig:
    """The model config of the tiny `family` model (see the module docstring)."""
    if family == "llama":
        return _llama_text_config(family)
    if family == "mistral":
        return MistralConfig(
            head_dim=HEAD_DIM,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **_decoder_fields(family),
        )
    if family == "qwen2":
        return _qwen2_text_config(family)
    image_token_id = special_token_ids()[IMAGE_TOKEN]
    video_token_id = special_token_ids()[VIDEO_TOKEN]
    if family == "llava":
        return LlavaConfig(
            vision_config=_clip_vision_config(),
            text_config=_llama_text_config(family),
            image_token_index=image_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=(CLIP_IMAGE_SIZE // PATCH_SIZE) ** 2,
            **_token_ids(family),
        )
    if family == "llava_next":
        return LlavaNextConfig(
            vision_config=_clip_vision_config(),
            text_config=_llama_text_config(family),
            image_token_index=image_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS,
            image_seq_length=(CLIP_IMAGE_SIZE // PATCH_SIZE) ** 2,
            **_token_ids(family),
        )
    if family == "llava_next_video":
        image_seq_length = (CLIP_IMAGE_SIZE // PATCH_SIZE) ** 2
        return LlavaNextVideoConfig(
            vision_config=_clip_vision_config(),
            text_config=_llama_text_config(family),
            image_token_index=image_token_id,
            video_token_index=video_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS,
            spatial_pool_mode="average",
            spatial_pool_stride=LLAVA_NEXT_VIDEO_POOL_STRIDE,
            image_seq_length=image_seq_length,
            # Read by no model code; the published 288 is half of its 576, kept in proportion.
            video_seq_length=image_seq_length // 2,
            **_token_ids(family),
        )
    if family == "llava_onevision":
        return LlavaOnevisionConfig(
            vision_config=_siglip_vision_config(),
            text_config=_qwen2_text_config(family),
            image_token_index=image_token_id,
            video_token_index=video_token_id,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=LLAVA_ONEVISION_GRID_PINPOINTS,
            vision_aspect_ratio=LLAVA_ONEVISION_ASPECT_RATIO,
            **_token_ids(family),
        )
    if family == "qwen2_vl":
        return Qwen2VLConfig(
            text_config=_qwen_vl_text_fields(family),
            vision_config={
                "depth": NUM_LAYERS,
                "embed_dim": VISION_HIDDEN_SIZE,
                "hidden_size": HIDDEN_SIZE,
                "mlp_ratio": 2,
                "num_heads": VISION_HEADS,
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": QWEN_MERGE_SIZE,
                "temporal_patch_size": QWEN_TEMPORAL_PATCH_SIZE,
                "initializer_range": INITIALIZER_RANGE,
            },
            **_qwen_vl_token_fields(),
            **_token_ids(family),
        )
    if family == "qwen2_5_vl":
        return Qwen2_5_VLConfig(
            text_config=_qwen_vl_text_fields(family),
            vision_config={
                "depth": NUM_LAYERS,
                "hidden_size": VISION_HIDDEN_SIZE,
                "intermediate_size": 2 * VISION_HIDDEN_SIZE,
                "out_hidden_size": HIDDEN_SIZE,
                "num_heads": VISION_HEADS,
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": QWEN_MERGE_SIZE,
                "temporal_patch_size": QWEN_TEMPORAL_PATCH_SIZE,
                "window_size": QWEN2_5_WINDOW_SIZE,
                "fullatt_block_indexes": [NUM_LAYERS - 1],
                "initializer_range": INITIALIZER_RANGE,
            },
            **_qwen_vl_token_fields(),
            **_token_ids(family),
        )
    raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
