"""Patch a Hugging Face (vision-)language model to run ZipVL, and undo it.

Everything goes through transformers' own extension points (``shared/FACTS.md``):
the ``"zipvl"`` attention + mask functions (``zipvl.attention``) selected for the
language model only with ``set_attn_implementation``, and a forward pre-hook on
the text decoder that hands every prefill a fresh ``ZipVLCache`` (``generate``
creates an empty ``DynamicCache``; the decoder returns ours in its output, which
``generate`` keeps for the following steps). No modeling code is copied or
replaced, so ``disable`` restores the dense model exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from zipvl.attention import ATTENTION_NAME, STATE_ATTRIBUTE, ZipVLState, register
from zipvl.backends.flash import check_flash_backend
from zipvl.cache import ZipVLCache
from zipvl.config import ZipVLConfig
from zipvl.statistics import ZipVLStats
from zipvl.text_tokens import media_token_ids

# model_type of the supported families: the causal LMs, then the LVLMs built on them.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama", "mistral", "qwen2", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl",
    "llava_next_video", "llava_onevision")
# Language models a Llava-style checkpoint may wrap that ZipVL is tested with.
_SUPPORTED_TEXT_MODEL_TYPES = ("llama", "mistral", "qwen2")
# LVLMs whose config names the language model they wrap (``text_config``), any of
# several; the Qwen-VL families have their own fixed one.
_WRAPPERS_WITH_TEXT_MODEL = ("llava", "llava_next", "llava_next_video", "llava_onevision")

_PATCH_ATTRIBUTE = "_zipvl_patch"


class _Patch:
    """What ``enable`` changed on one model, so ``disable`` can put it back."""

    def __init__(self, state: ZipVLState, decoder: torch.nn.Module,
                 attention_modules: list[torch.nn.Module], previous_implementation: str,
                 hooks: list[torch.utils.hooks.RemovableHandle]) -> None:
        self.state = state
        self.decoder = decoder
        self.attention_modules = attention_modules
        self.previous_implementation = previous_implementation
        self.hooks = hooks


def enable(model: torch.nn.Module, config: ZipVLConfig | Mapping[str, Any] | None = None,
           ) -> torch.nn.Module:
    """Run ``model``'s language model with ZipVL; returns ``model`` (patched in place).

    Idempotent: enabling an enabled model only replaces its config.
    """
    config = _as_config(config)
    _check_supported(model)
    check_flash_backend(config.backend, _device_of(model))
    media_ids = media_token_ids(model.config)
    register()
    patch: _Patch | None = getattr(model, _PATCH_ATTRIBUTE, None)
    if patch is not None:
        patch.state.config = config
        return model

    decoder = model.get_decoder()
    text_config = decoder.config
    attention_modules = _attention_modules(decoder, text_config.num_hidden_layers)
    previous_implementation = text_config._attn_implementation
    state = ZipVLState(config=config, num_layers=text_config.num_hidden_layers)
    model.set_attn_implementation(_implementation_request(model, ATTENTION_NAME))
    hooks = [decoder.register_forward_pre_hook(
        partial(_before_decoder_forward, state, _parameter_names(decoder)), with_kwargs=True)]
    if media_ids:
        hooks.append(model.register_forward_pre_hook(
            partial(_before_model_forward, state, _parameter_names(model), media_ids),
            with_kwargs=True))
    for module in attention_modules:
        setattr(module, STATE_ATTRIBUTE, state)
    setattr(model, _PATCH_ATTRIBUTE, _Patch(state, decoder, attention_modules,
                                            previous_implementation, hooks))
    return model


def disable(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``enable``: the previous attention implementation, no hooks, no state."""
    patch: _Patch | None = getattr(model, _PATCH_ATTRIBUTE, None)
    if patch is None:
        return model
    for hook in patch.hooks:
        hook.remove()
    model.set_attn_implementation(_implementation_request(model, patch.previous_implementation))
    for module in patch.attention_modules:
        if hasattr(module, STATE_ATTRIBUTE):
            delattr(module, STATE_ATTRIBUTE)
    delattr(model, _PATCH_ATTRIBUTE)
    return model


def is_enabled(model: torch.nn.Module) -> bool:
    return getattr(model, _PATCH_ATTRIBUTE, None) is not None


def runtime_state(model: torch.nn.Module) -> ZipVLState:
    """The live ``ZipVLState`` of a patched model (config, current cache, prefill record)."""
    patch: _Patch | None = getattr(model, _PATCH_ATTRIBUTE, None)
    if patch is None:
        raise ValueError("this model is not patched with ZipVL: call zipvl.enable(model) first")
    return patch.state


def mark_media(model: torch.nn.Module, is_media: torch.Tensor) -> None:
    """``keep_text_tokens`` on a model without image or video tokens: ``is_media [b, n]``
    (bool) names the positions of the *next* prompt that compete for the budget; every
    other position is kept. The next prefill takes the mark and the one after it needs
    a new one. For prompts whose media are not placeholder ids, such as a text passage
    standing in for an image (``benchmarks/bench_text_as_media.py``).
    An LVLM's image and video positions are always read from its ``input_ids``.
    """
    state = runtime_state(model)
    if media_token_ids(model.config):
        raise ValueError(f"{model.config.model_type} has image or video tokens: keep_text_tokens "
                         "reads them from the prompt's input_ids, so there is nothing to mark")
    if not state.config.keep_text_tokens:
        raise ValueError("mark_media needs a config with keep_text_tokens=True")
    if is_media.dtype != torch.bool or is_media.dim() != 2:
        raise ValueError(f"is_media must be a [batch, tokens] bool tensor, got "
                         f"{is_media.dtype} of shape {tuple(is_media.shape)}")
    device = _device_of(model)
    state.pending_media = is_media if device is None else is_media.to(device)


def stats(model: torch.nn.Module) -> ZipVLStats:
    """Kept tokens, ratios and cache bytes of the most recent prefill.

    Arrays are empty (``[0, 0]``) before the first prefill.
    """
    return runtime_state(model).record.to_stats()


# ---- helpers ------------------------------------------------------------------------------


def _as_config(config: ZipVLConfig | Mapping[str, Any] | None) -> ZipVLConfig:
    if config is None:
        return ZipVLConfig()
    if isinstance(config, ZipVLConfig):
        return config
    if isinstance(config, Mapping):
        return ZipVLConfig.from_dict(dict(config))
    raise TypeError(f"config must be a ZipVLConfig, a mapping or None, got {type(config).__name__}")


def _check_supported(model: torch.nn.Module) -> None:
    model_config = getattr(model, "config", None)
    model_type = getattr(model_config, "model_type", None)
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"ZipVL does not support model_type {model_type!r}; "
                         f"supported model types: {supported}")
    if model_type in _WRAPPERS_WITH_TEXT_MODEL:
        text_type = model_config.get_text_config(decoder=True).model_type
        if text_type not in _SUPPORTED_TEXT_MODEL_TYPES:
            raise ValueError(f"ZipVL does not support a {model_type} model whose language model is "
                             f"{text_type!r}; supported language models: "
                             f"{', '.join(_SUPPORTED_TEXT_MODEL_TYPES)}")


def _device_of(model: torch.nn.Module) -> torch.device | None:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else None


def _implementation_request(model: torch.nn.Module, implementation: str) -> str | dict[str, str]:
    """A causal LM takes a plain name; an LVLM gets it for ``text_config`` only, so the
    vision tower keeps its own implementation."""
    if "text_config" in getattr(model.config, "sub_configs", {}):
        return {"text_config": implementation}
    return implementation


def _attention_modules(decoder: torch.nn.Module, num_layers: int) -> list[torch.nn.Module]:
    modules = [module for module in decoder.modules()
               if hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups")]
    if len(modules) != num_layers:
        raise ValueError(f"expected {num_layers} attention modules in {type(decoder).__name__}, "
                         f"found {len(modules)}")
    return modules


# The cache argument of a model's ``forward``: transformers 5.24 renamed
# ``past_key_values`` to ``cache`` (the old name stays a deprecated alias until 5.40).
_CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` (and ``generate``) takes its KV cache by.

    Read from the signature, not from the transformers version: ``cache`` on 5.24+,
    ``past_key_values`` before. Pass a ``ZipVLCache`` under it to ``generate`` so
    generation does not depend on the decoder hook swapping one in.
    """
    names = inspect.signature(model.forward).parameters
    for name in _CACHE_ARGUMENT_NAMES:
        if name in names:
            return name
    raise ValueError(f"{type(model).__name__}.forward takes no cache argument "
                     f"(looked for {', '.join(_CACHE_ARGUMENT_NAMES)})")


def cache_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """``{cache_keyword(model): ZipVLCache()}`` for a patched model, ``{}`` for another:
    ``model.generate(**inputs, **zipvl.cache_kwargs(model))`` on every supported version."""
    return {cache_keyword(model): ZipVLCache()} if is_enabled(model) else {}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward or ``generate`` returned (``None`` without ``use_cache``).

    Read from the output's own fields, not from the transformers version: ``cache`` on
    5.24+, ``past_key_values`` before. 5.24+ keeps ``past_key_values`` as an alias that
    logs a deprecation warning on every read and may go in a later release.
    """
    fields = getattr(output, "__dataclass_fields__", {})
    for name in _CACHE_ARGUMENT_NAMES:
        if name in fields:
            return getattr(output, name)
    raise ValueError(f"{type(output).__name__} holds no cache field "
                     f"(looked for {', '.join(_CACHE_ARGUMENT_NAMES)})")


def _parameter_names(module: torch.nn.Module) -> list[str]:
    return [name for name, parameter in inspect.signature(module.forward).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]


def _argument(name: str, names: list[str], args: tuple, kwargs: dict) -> Any:
    if name in kwargs:
        return kwargs[name]
    if name in names and names.index(name) < len(args):
        return args[names.index(name)]
    return None


def _cache_argument(names: list[str], args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Where the caller put the cache (either name; a caller may still use the deprecated
    one, which transformers renames after this hook) and its value."""
    for name in _CACHE_ARGUMENT_NAMES:
        value = _argument(name, names, args, kwargs)
        if value is not None:
            return name, value
    canonical = next((name for name in _CACHE_ARGUMENT_NAMES if name in names), "past_key_values")
    return canonical, None


def _with_argument(name: str, value: Any, names: list[str], args: tuple,
                   kwargs: dict) -> tuple[tuple, dict]:
    if name not in kwargs and name in names and names.index(name) < len(args):
        args = list(args)
        args[names.index(name)] = value
        return tuple(args), kwargs
    return args, {**kwargs, name: value}


def _before_model_forward(state: ZipVLState, names: list[str], media_ids: tuple[int, ...],
                          module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """``keep_text_tokens``: note which positions of the prompt are image or video tokens
    (the decoder only sees embeddings); the decoder's hook takes it at the prefill."""
    state.pending_media = None
    if state.config.keep_text_tokens:
        input_ids = _argument("input_ids", names, args, kwargs)
        if input_ids is not None:
            # Compared with Python ints: no id tensor copied to the device each step.
            is_media = input_ids == media_ids[0]
            for token in media_ids[1:]:
                is_media = is_media | (input_ids == token)
            state.pending_media = is_media


def _before_decoder_forward(state: ZipVLState, names: list[str], module: torch.nn.Module,
                            args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Start a prefill record and swap an empty non-ZipVL cache for a ``ZipVLCache``."""
    cache_name, cache = _cache_argument(names, args, kwargs)
    use_cache = _argument("use_cache", names, args, kwargs)
    if use_cache is None:
        use_cache = getattr(module.config, "use_cache", True)
    tokens = _argument("inputs_embeds", names, args, kwargs)
    if tokens is None:
        tokens = _argument("input_ids", names, args, kwargs)
    num_new = tokens.shape[1] if tokens is not None and tokens.ndim >= 2 else None

    empty = cache is None or cache.get_seq_length() == 0
    if empty:
        if num_new == 0:
            raise ValueError("ZipVL got an empty prompt (0 tokens): nothing to prefill")
        state.begin_prefill()
        if use_cache and not isinstance(cache, ZipVLCache):
            cache = ZipVLCache()
            args, kwargs = _with_argument(cache_name, cache, names, args, kwargs)
    elif not isinstance(cache, ZipVLCache):
        raise ValueError(f"ZipVL can only continue from a ZipVLCache, got a non-empty "
                         f"{type(cache).__name__}")
    # A foreign empty cache kept with use_cache=False only sees this prefill: no compression.
    state.cache = cache if isinstance(cache, ZipVLCache) else None
    return args, kwargs
