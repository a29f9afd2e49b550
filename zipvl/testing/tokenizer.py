"""An offline byte-level BPE tokenizer for the tiny test models.

Trained in code with the `tokenizers` library (byte-level BPE as in GPT-2 /
Llama-3 / Qwen2) on a small built-in corpus, so no tokenizer file is ever
downloaded. One vocabulary serves every family: it holds the special tokens
that all supported families need (image placeholders, vision markers, chat
markers), and each family gets its own chat template on top.
"""

from __future__ import annotations

import json
from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
# Llava / LlavaNext / LLaVA-NeXT-Video / LLaVA-OneVision image and video placeholders.
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# Qwen2-VL / Qwen2.5-VL placeholders and markers.
IMAGE_PAD_TOKEN = "<|image_pad|>"
VIDEO_PAD_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
# Chat markers: ChatML (Qwen2), Llama-3 headers, Mistral instructions.
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
END_OF_TURN_TOKEN = "<|eot_id|>"
INST_START_TOKEN = "[INST]"
INST_END_TOKEN = "[/INST]"

# Fixed order so that every special token has the same id in every build
# (ids 0..len-1, before any learned merge).
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    IMAGE_PAD_TOKEN,
    VIDEO_PAD_TOKEN,
    VISION_START_TOKEN,
    VISION_END_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    END_OF_TURN_TOKEN,
    INST_START_TOKEN,
    INST_END_TOKEN,
    # Appended last, so that every earlier token keeps the id it had before it was added.
    VIDEO_TOKEN,
)

# Learned vocabulary size (specials + 256 byte symbols + merges). Small on
# purpose: the embedding matrix stays tiny and the merges still shorten text.
BPE_VOCAB_SIZE = 640

# Vocabulary size the models are built with: a round number above the
# tokenizer's length, as real checkpoints pad their embedding matrices.
MODEL_VOCAB_SIZE = 704

MODEL_MAX_LENGTH = 8192

_CORPUS = """\
Describe the image in detail. What is shown in this picture? The photo shows a small red
house next to a tall green tree under a blue sky. A dog is running across the field while two
children play with a yellow ball. There is a cat sitting on the window of the old building.
Question: how many people are in the scene? Answer: there are three people standing near the car.
Caption the video. In the first frame a person walks into the kitchen, then opens the fridge and
takes out a bottle of milk. The camera moves slowly to the left, and the light changes from warm
to cold. Summarize what happens in these frames in one sentence.
You are a helpful assistant. Please answer the question about the image briefly and accurately.
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Numbers and symbols: 0 1 2 3 4 5 6 7 8 9, 10, 42, 100%, $5.99, #tag, email@example.com, (a+b)*c = d.
Colors: red, orange, yellow, green, blue, indigo, violet, black, white, gray, brown, pink.
Objects: chair, table, lamp, book, phone, laptop, cup, plate, bicycle, bus, train, boat, plane.
Places: street, beach, mountain, forest, river, city, village, office, school, park, market.
Actions: walking, running, sitting, eating, reading, writing, talking, driving, swimming.
"""


# Qwen2's / Llama-3's pre-tokenization split (words, single digits, punctuation
# runs, whitespace runs), as in transformers' Qwen2Tokenizer.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _byte_level_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # No prefix space: decode(encode(text)) == text; the byte-level alphabet
    # makes every string encodable without an unknown token.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _train_backend() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tokenizer


@lru_cache(maxsize=1)
def _trained_backend_json() -> str:
    # Training is deterministic for a fixed corpus; cache its serialization so
    # that each build gets a fresh, independent copy.
    return _train_backend().to_str()


def build_tokenizer(chat_template: str, qwen_style: bool = False) -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer with every special token and `chat_template`.

    `qwen_style`: a `Qwen2Tokenizer` over the same vocabulary (it adds NFC
    normalization). `AutoTokenizer` always loads Qwen2 checkpoints as
    `Qwen2Tokenizer`, rebuilding it from vocabulary and merges, so building
    the Qwen families' tokenizer that way keeps save/load lossless. Otherwise a
    plain tokenizers-backed tokenizer, as Llama-3 checkpoints use.

    No special tokens are added on encode (the chat templates write BOS where a
    family expects it), so `decode(encode(text)) == text` (for NFC text when
    `qwen_style`). Padding is on the left, as batched generation needs.
    """
    common = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": [
            token for token in SPECIAL_TOKENS if token not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
        ],
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": chat_template,
    }
    if qwen_style:
        model = json.loads(_trained_backend_json())["model"]
        merges = [tuple(merge) for merge in model["merges"]]
        return Qwen2Tokenizer(vocab=dict(model["vocab"]), merges=merges, unk_token=None, **common)
    backend = Tokenizer.from_str(_trained_backend_json())
    return PreTrainedTokenizerFast(tokenizer_object=backend, **common)


def special_token_ids() -> dict[str, int]:
    """Token -> id for every special token (fixed: they come first in the vocabulary)."""
    return {token: index for index, token in enumerate(SPECIAL_TOKENS)}
