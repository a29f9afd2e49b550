"""The ``"zipvl"`` attention implementation registered with transformers (ZipVL steps 1-8).

transformers 5.x calls a registered attention function from every decoder layer
with the query after RoPE and the K/V its cache returned (``shared/FACTS.md``).
At prefill (the layer's cache was empty) this function runs ZipVL per sample on
the unpadded tokens: selection (``layer_policy.select_for_layer``), sparse
prefill (``sparse_attention.sparse_prefill_attention``), then compresses the
layer's ``ZipVLCache`` to the kept tokens. While decoding it reads the ragged
compressed cache (``sparse_attention.decode_attention``, or flash-attn).

The matching mask function hands the attention function the 2-D padding mask
(the flash-attention convention in transformers) instead of an ``n x n`` mask:
ZipVL only needs to know which positions are padding, and builds the causal
structure itself on the gathered tokens.

The cache object is not passed to attention functions; the forward pre-hook in
``zipvl.patch`` records the current one in the model's ``ZipVLState``, which
every attention module of the language model points to.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from zipvl.backends import flash
from zipvl.cache import ZipVLCache, ZipVLLayer
from zipvl.config import ZipVLConfig
from zipvl.even_spread import ScoredLayer, compress_evenly
from zipvl.layer_policy import select_for_layer
from zipvl.padding import PaddingLayout, padding_layout
from zipvl.ranking import keep_ranked
from zipvl.sparse_attention import (
    decode_attention,
    dense_causal_attention,
    sparse_prefill_attention,
)
from zipvl.statistics import PrefillRecord
from zipvl.strategies import AdaptiveBudget
from zipvl.text_tokens import SampleMedia, keep_text_and_ranked_media, sample_media

ATTENTION_NAME = "zipvl"
STATE_ATTRIBUTE = "_zipvl_state"

@dataclass
class ZipVLState:
    """Runtime state of one patched model, shared by its attention modules and hooks.

    The current cache is held by weak reference: once ``generate`` (or the caller)
    drops it, its memory is freed rather than kept alive until the next prefill.
    """

    config: ZipVLConfig
    num_layers: int
    record: PrefillRecord = field(default_factory=PrefillRecord)
    _cache_ref: weakref.ref | None = field(default=None, repr=False)
    # The padding mask of the current prefill and its layout: every layer gets the same mask
    # object, so its one host read (``padding.padding_layout``) is paid once per prefill.
    _padding: tuple[torch.Tensor, int, PaddingLayout] | None = field(default=None, repr=False)
    # ``budget_spread: even``: the layers of the current prefill scored so far, compressed
    # together once the last one is (``zipvl.even_spread``).
    scored_layers: dict[int, ScoredLayer] = field(default_factory=dict, repr=False)
    # ``keep_text_tokens``: which prompt positions are image or video tokens, ``[b, n]``,
    # recorded from ``input_ids`` by the model's forward pre-hook (``zipvl.patch``), or
    # named by ``zipvl.mark_media`` on a text model, before the decoder starts the
    # prefill; per sample once the padding is known.
    pending_media: torch.Tensor | None = field(default=None, repr=False)
    media: torch.Tensor | None = field(default=None, repr=False)
    _samples_media: list[SampleMedia] | None = field(default=None, repr=False)

    @property
    def cache(self) -> ZipVLCache | None:
        return self._cache_ref() if self._cache_ref is not None else None

    @cache.setter
    def cache(self, cache: ZipVLCache | None) -> None:
        self._cache_ref = weakref.ref(cache) if cache is not None else None

    def begin_prefill(self) -> None:
        self.record = PrefillRecord()
        self._padding = None
        self.scored_layers = {}
        self.media, self.pending_media = self.pending_media, None
        self._samples_media = None

    def samples_media(self, layout: PaddingLayout, num_tokens: int) -> list[SampleMedia]:
        """Each sample's media tokens in this prefill (``keep_text_tokens``), found once."""
        if self._samples_media is None:
            if self.media is None:
                raise RuntimeError("keep_text_tokens needs the prompt's input_ids to find its image "
                                   "and video tokens: call the whole model with input_ids, not "
                                   "its language model or inputs_embeds; on a model without "
                                   "image or video tokens, name them with zipvl.mark_media "
                                   "before each prompt")
            if tuple(self.media.shape) != (len(layout.counts), num_tokens):
                raise RuntimeError(f"keep_text_tokens: the media mask is {tuple(self.media.shape)}, "
                                   f"the prefill {len(layout.counts)} x {num_tokens}")
            padded = self.media[:, None, :, None]
            masks = [layout.take(padded, sample)[0, :, 0] for sample in range(len(layout.counts))]
            self._samples_media = sample_media(masks, self.config.keep_last)
        return self._samples_media

    def padding_layout(self, attention_mask: torch.Tensor | None, batch: int, num_tokens: int,
                       device: torch.device) -> PaddingLayout:
        """The layout of the prompt's real tokens, reused while the same mask object comes back."""
        _check_padding_mask(attention_mask, num_tokens)
        if attention_mask is None:
            return PaddingLayout.unpadded(batch, num_tokens)
        if self._padding is not None and self._padding[0] is attention_mask \
                and self._padding[1] == num_tokens:
            return self._padding[2]
        valid = attention_mask[:, -num_tokens:].to(device=device, dtype=torch.bool)
        layout = padding_layout(valid, batch, num_tokens)
        # Holding the mask keeps its id from being reused by another tensor while cached.
        self._padding = (attention_mask, num_tokens, layout)
        return layout


def register() -> None:
    """Register the ``"zipvl"`` attention and mask functions with transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, zipvl_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, zipvl_padding_mask)


def zipvl_padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0,
                       kv_offset: int = 0, attention_mask: torch.Tensor | None = None,
                       **kwargs) -> torch.Tensor | None:
    """The 2-D boolean padding mask ``[b, kv_length]`` (True = real token), or ``None``.

    Same contract as transformers' ``flash_attention_mask``: no ``b x n x n`` tensor.
    """
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:] if attention_mask.shape[-1] > kv_length else attention_mask


def zipvl_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask: torch.Tensor | None,
                            scaling: float | None = None, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query [b, H, q, d]`` -> ``([b, q, H, d], None)``."""
    state: ZipVLState | None = getattr(module, STATE_ATTRIBUTE, None)
    if state is None:
        raise RuntimeError("attention implementation 'zipvl' is selected but this model was not "
                           "patched: call zipvl.enable(model) instead of setting it by hand")
    if dropout:
        raise NotImplementedError("ZipVL is inference-only: attention dropout must be 0 "
                                  "(call model.eval())")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    layer_idx = module.layer_idx
    layer = _cache_layer(state.cache, layer_idx)
    sliding_window = kwargs.get("sliding_window")
    if layer is not None and not layer.awaiting_compression:
        if sliding_window is not None:
            _check_window(sliding_window, _longest_sequence(layer))
        with record_function("zipvl.decode"):
            output = _decode(state, layer, layer_idx, query, key, value, scale)
    else:
        with record_function("zipvl.prefill"):
            output = _prefill(state, layer, layer_idx, query, key, value, attention_mask, scale,
                              sliding_window)
    return output.transpose(1, 2).contiguous(), None


def _cache_layer(cache: object, layer_idx: int) -> ZipVLLayer | None:
    if cache is None:
        return None
    if not isinstance(cache, ZipVLCache):
        raise RuntimeError(f"ZipVL needs a ZipVLCache, got {type(cache).__name__}")
    return cache.layers[layer_idx] if layer_idx < len(cache.layers) else None


def _check_window(sliding_window: int | None, longest: int) -> None:
    # Inside the window a sliding-window layer is plain causal attention; beyond it the
    # compressed cache would need evicting by position, which ZipVL does not define.
    if sliding_window is not None and longest > sliding_window:
        raise NotImplementedError(
            f"ZipVL does not support sliding-window attention past the window: sequence of "
            f"{longest} tokens, window {sliding_window}")


def _longest_sequence(layer: ZipVLLayer) -> int:
    decoded = layer.logical_length - layer.prefill_length
    return max(layer.host_prompt_tokens, default=0) + decoded


# ---- prefill ------------------------------------------------------------------------------


def _check_padding_mask(attention_mask: torch.Tensor | None, num_tokens: int) -> None:
    """A 2-D ``[b, >= n]`` padding mask (1 = real token) or ``None``; anything else raises."""
    if attention_mask is None:
        return
    if attention_mask.ndim != 2:
        raise NotImplementedError(
            f"ZipVL needs a 2-D padding mask, got a {attention_mask.ndim}-D attention mask "
            "(custom 4-D masks are not supported)")
    if attention_mask.shape[-1] < num_tokens:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, "
                         f"the prompt has {num_tokens}")


def _prefill(state: ZipVLState, layer: ZipVLLayer | None, layer_idx: int, query: torch.Tensor,
             key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
             scale: float, sliding_window: int | None) -> torch.Tensor:
    batch, num_heads, num_tokens, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if key.shape[2] != num_tokens:
        raise RuntimeError(f"ZipVL prefill got {key.shape[2]} keys for {num_tokens} queries: "
                           "the cache already held tokens that ZipVL did not compress")
    config = state.config
    layout = state.padding_layout(attention_mask, batch, num_tokens, query.device)
    prompt_tokens = layout.counts
    _check_window(sliding_window, max(prompt_tokens, default=0))

    # A loop over samples: each has its own unpadded length n_i and, after selection, its own
    # budget p_i, so selection and the sparse kernels run on ragged shapes (the flash backend
    # packs the batch into one varlen call where it can; see _prefill_outputs). Nothing in
    # the loop reads a device value except the adaptive budget, which decides a shape.
    samples = [(layout.take(query, sample), layout.take(key, sample), layout.take(value, sample))
               for sample in range(batch)]
    bytes_per_token = 2 * num_kv_heads * head_dim * key.element_size()
    if config.budget_spread == "even" and config.strategy.has_adaptive_budget \
            and config.tau < 1.0:
        return _prefill_spread_evenly(state, layer, layer_idx, samples, layout, scale, query,
                                      bytes_per_token)
    media = state.samples_media(layout, num_tokens) if config.keep_text_tokens else None
    kept_list, modes = [], []
    for sample, (sample_query, sample_key, _) in enumerate(samples):
        kept, mode = _choose_tokens(state, layer_idx, sample, sample_query, sample_key, scale,
                                    media[sample] if media is not None else None)
        kept_list.append(kept)
        modes.append(mode)

    with record_function("zipvl.attention_kernel"):
        outputs = _prefill_outputs(config, samples, kept_list, modes, scale, query)
    output = _assemble(outputs, layout, query)

    if layer is not None:
        kept_in_prompt = [layout.in_prompt(sample, kept) for sample, kept in enumerate(kept_list)]
        with record_function("zipvl.compress"):
            layer.compress(kept_in_prompt, prompt_tokens=prompt_tokens)
    state.record.add_layer(layer_idx, [int(kept.shape[-1]) for kept in kept_list], prompt_tokens,
                           bytes_per_token=bytes_per_token)
    return output


def _assemble(outputs: list[torch.Tensor | None], layout: PaddingLayout,
              query: torch.Tensor) -> torch.Tensor:
    """The per-sample outputs ``[H, n_i, d]`` put back into the padded ``[b, H, n, d]``."""
    output = torch.zeros_like(query)
    for sample, sample_output in enumerate(outputs):
        if sample_output is not None:
            layout.put(output, sample, sample_output)
    return output


def _prefill_spread_evenly(state: ZipVLState, layer: ZipVLLayer | None, layer_idx: int,
                           samples: list, layout: PaddingLayout, scale: float,
                           query: torch.Tensor, bytes_per_token: int) -> torch.Tensor:
    """``budget_spread: even``: attention with this layer's own budget now; the cache of
    every layer compressed together after the last one (``zipvl.even_spread``)."""
    config = state.config
    probes_list, budgets, kept_list, modes = [], [], [], []
    for sample, (sample_query, sample_key, _) in enumerate(samples):
        num_tokens = sample_key.shape[1]
        if num_tokens == 0 or layer_idx in config.dense_layers \
                or num_tokens < config.min_prefill_len:
            probes_list.append(None)
            budgets.append(num_tokens)
            kept_list.append(None)
            modes.append("empty" if num_tokens == 0 else "dense")
            continue
        with record_function("zipvl.select"):
            probes, budget = config.strategy.scored_budget(
                sample_query, sample_key, config=config, layer_idx=layer_idx, sample=sample,
                scale=scale)
            # Dense prefill reads no kept set; a sparse one attends to this layer's own.
            kept = keep_ranked(probes, budget, config) if config.prefill != "dense" else None
        probes_list.append(probes)
        budgets.append(budget)
        kept_list.append(kept)
        modes.append(config.prefill)
    with record_function("zipvl.attention_kernel"):
        outputs = _prefill_outputs(config, samples, kept_list, modes, scale, query)
    state.scored_layers[layer_idx] = ScoredLayer(
        layer=layer, probes=probes_list, budgets=budgets, layout=layout,
        num_kv_heads=samples[0][1].shape[0], device=query.device,
        bytes_per_token=bytes_per_token)
    if len(state.scored_layers) == state.num_layers:
        compress_evenly(state.scored_layers, config, state.record.add_layer)
        state.scored_layers = {}
    return _assemble(outputs, layout, query)


def _choose_tokens(state: ZipVLState, layer_idx: int, sample: int, query: torch.Tensor,
                   key: torch.Tensor, scale: float,
                   media: SampleMedia | None = None) -> tuple[torch.Tensor, str]:
    """Kept positions ``[Hk, p]`` of one unpadded sample and the prefill mode to run it with."""
    config = state.config
    num_kv_heads, num_tokens = key.shape[0], key.shape[1]
    every_token = torch.arange(num_tokens, device=key.device).expand(num_kv_heads, num_tokens)
    if num_tokens == 0:
        return every_token, "empty"
    if layer_idx in config.dense_layers or num_tokens < config.min_prefill_len:
        return every_token, "dense"
    if media is not None:
        with record_function("zipvl.select"):
            kept = keep_text_and_ranked_media(query, key, media, config, layer_idx, scale)
    else:
        kept, _ = select_for_layer(query, key, config, layer_idx, scale, sample=sample)
    return kept, config.prefill


def _prefill_outputs(config: ZipVLConfig, samples: list, kept_list: list[torch.Tensor],
                     modes: list[str], scale: float,
                     query: torch.Tensor) -> list[torch.Tensor | None]:
    """Attention output ``[H, n_i, d]`` per sample (``None`` for an empty sample)."""
    outputs: list[torch.Tensor | None] = [None] * len(samples)
    flash_modes = {"dense": flash.dense_prefill, "qkv": flash.gathered_prefill}
    if flash.use_flash(config.backend, query):
        # One packed kernel call per mode over the whole batch; kv / kv_local have no
        # flash kernel here and fall through to SDPA below.
        for mode, kernel in flash_modes.items():
            members = [i for i, sample_mode in enumerate(modes) if sample_mode == mode]
            if not members:
                continue
            queries, keys, values = (list(column) for column in zip(*(samples[i] for i in members)))
            if mode == "qkv":
                results = kernel(queries, keys, values, [kept_list[i] for i in members], scale)
            else:
                results = kernel(queries, keys, values, scale)
            for i, result in zip(members, results):
                outputs[i] = result
    for i, ((sample_query, sample_key, sample_value), mode) in enumerate(zip(samples, modes)):
        if outputs[i] is not None or mode == "empty":
            continue
        if mode == "dense":
            outputs[i] = dense_causal_attention(sample_query, sample_key, sample_value, scale)
        else:
            outputs[i] = sparse_prefill_attention(sample_query, sample_key, sample_value,
                                                  kept_list[i], mode, config.local_window, scale)
    return outputs


# ---- decoding -----------------------------------------------------------------------------


def _decode(state: ZipVLState, layer: ZipVLLayer, layer_idx: int, query: torch.Tensor,
            key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """New tokens over the ragged compressed cache (they were appended by ``update``)."""
    with record_function("zipvl.attention_kernel"):
        if flash.use_flash(state.config.backend, query):
            output = flash.kvcache_decode(query, layer.keys, layer.values, layer.lengths, scale)
        else:
            output = decode_attention(query, key, value, layer.lengths, scale)
    if state.config.recompress_every > 0:
        _maybe_recompress(state.config, layer, layer_idx, query, scale)
    return output


def _maybe_recompress(config: ZipVLConfig, layer: ZipVLLayer, layer_idx: int,
                      query: torch.Tensor, scale: float) -> None:
    """Every ``recompress_every`` decoded tokens, re-run steps 1-5 on the layer's cache.

    Decisions (the paper does not define re-compression): the probes are the queries
    of the last ``m`` decoded tokens, which sit in the last ``m`` cache slots, so
    causality by slot order holds; no random probes (the cached tokens have no
    queries kept). The budget is always the adaptive one (``tau``): a fixed ratio
    re-applied every ``m`` steps would shrink the cache geometrically. Dense layers
    and samples whose prompt ran dense (``min_prefill_len``) keep every token.
    """
    if layer_idx in config.dense_layers:
        return
    window = config.recompress_every
    layer.remember_query(query, window)
    layer.decode_steps += query.shape[2]
    if layer.decode_steps < window:
        return
    probes = layer.recent_queries
    num_probes = probes.shape[2]
    probe_config = dataclasses.replace(config, num_recent_probes=num_probes, num_random_probes=0,
                                       strategy=AdaptiveBudget())
    num_heads, head_dim = probes.shape[1], probes.shape[3]
    num_kv_heads = layer.keys.shape[1]
    kept_list = []
    for sample, length in enumerate(layer.host_lengths):
        if layer.host_prompt_tokens[sample] < config.min_prefill_len:
            kept_list.append(torch.arange(length, device=layer.keys.device)
                             .expand(num_kv_heads, length))
            continue
        sample_keys = layer.keys[sample, :, :length]
        # Rows before the probes are never read (no random probes): zeros stand in for them.
        rows = torch.cat([probes.new_zeros(num_heads, length - num_probes, head_dim),
                          probes[sample]], dim=1)
        kept, _ = select_for_layer(rows, sample_keys, probe_config, layer_idx, scale)
        kept_list.append(kept)
    layer.compress(kept_list)
    layer.recent_queries = None
    layer.decode_steps = 0


register()
