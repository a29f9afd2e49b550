"""Chat templates of the tiny models, modelled on each family's published one.

Each accepts `content` as a string or as a list of parts
(`{"type": "image"}` / `{"type": "video"}` / `{"type": "text", "text": ...}`),
as `apply_chat_template` passes them; an image (video) part becomes the
family's image (video) placeholder, which the processor then expands to the
right number of tokens.
"""

from __future__ import annotations

# Shared Jinja macro: render one message's content with `image` / `video` as the markers.
_CONTENT_MACRO = (
    "{% macro render(content, image, video='') %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' %}{{ image }}"
    "{% elif part['type'] == 'video' %}{{ video }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
)

# Llama-3 header format.
LLAMA_TEMPLATE = (
    _CONTENT_MACRO + "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ render(message['content'], '') }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Mistral instruct format.
MISTRAL_TEMPLATE = (
    _CONTENT_MACRO + "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ render(message['content'], '') }}</s>"
    "{% else %}[INST] {{ render(message['content'], '') }} [/INST]"
    "{% endif %}"
    "{% endfor %}"
)

# ChatML (Qwen2), with Qwen2-VL's vision markers around each image and video.
CHATML_TEMPLATE = (
    _CONTENT_MACRO + "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{{ render(message['content'], '<|vision_start|><|image_pad|><|vision_end|>', "
    "'<|vision_start|><|video_pad|><|vision_end|>') }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Llava-1.5 "USER: <image>\n... ASSISTANT:" format.
LLAVA_TEMPLATE = (
    _CONTENT_MACRO + "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT: {{ render(message['content'], '') }}</s>"
    "{% elif message['role'] == 'system' %}{{ render(message['content'], '') }} "
    "{% else %}USER: {{ render(message['content'], '<image>\n') }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Shared Jinja macro for the LLaVA-NeXT-Video / OneVision templates, which render a turn's
# image parts first, then its video parts, then its text parts, whatever their order.
_GROUPED_CONTENT_MACRO = (
    "{% macro render_grouped(content, image, video, text_before, text_after) %}"
    "{% if content is string %}{{ text_before }}{{ content }}{{ text_after }}"
    "{% else %}"
    "{% for part in content %}{% if part['type'] == 'image' %}{{ image }}{% endif %}{% endfor %}"
    "{% for part in content %}{% if part['type'] == 'video' %}{{ video }}{% endif %}{% endfor %}"
    "{% for part in content %}{% if part['type'] == 'text' %}"
    "{{ text_before }}{{ part['text'] }}{{ text_after }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endmacro %}"
)

# llava-hf/LLaVA-NeXT-Video-7B-hf: "USER: <image>\n<video>\n{text} ASSISTANT:", roles upper-cased,
# no role prefix for a system turn. Its Llama tokenizer adds BOS on encode; ours adds no
# special tokens, so the template writes it.
LLAVA_NEXT_VIDEO_TEMPLATE = (
    _GROUPED_CONTENT_MACRO + "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{{ render_grouped(message['content'], '<image>\n', '<video>\n', '', ' ') }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# llava-hf/llava-onevision-qwen2-7b-ov-hf: ChatML with "<image>" / "<video>" right after the
# role line and each text part on its own line.
LLAVA_ONEVISION_TEMPLATE = (
    _GROUPED_CONTENT_MACRO + "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{{ render_grouped(message['content'], '<image>', '<video>', '\n', '') }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "llama": LLAMA_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "qwen2": CHATML_TEMPLATE,
    "llava": LLAVA_TEMPLATE,
    "llava_next": LLAVA_TEMPLATE,
    "qwen2_vl": CHATML_TEMPLATE,
    "qwen2_5_vl": CHATML_TEMPLATE,
    "llava_next_video": LLAVA_NEXT_VIDEO_TEMPLATE,
    "llava_onevision": LLAVA_ONEVISION_TEMPLATE,
}
