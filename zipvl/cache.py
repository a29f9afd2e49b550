"""The compressed KV cache: only the tokens ZipVL kept, ragged across the batch (ZipVL step 7).

ZipVL (He et al., arXiv 2410.08584, Sec. 3.3) keeps in each layer's KV cache only
the tokens its sparse prefill selected; ``shared/ZIPVL.md`` steps 7-8 fix how:
the kept tokens of every sample sit left-aligned in ``[b, Hk, capacity, d]`` with
a per-sample ``lengths[b]``, decoding appends at ``lengths[b]``, and positions
keep counting in the *uncompressed* sequence. This is a transformers ``Cache``
(``Cache(layer_class_to_replicate=...)``), so ``generate`` drives it unchanged.

Life of a layer: the first ``update`` (prefill) stores the full K/V and returns
it; the ``"zipvl"`` attention function then calls ``compress`` with the kept
positions of every sample, which drops everything else (padding included).
Later ``update`` calls append.

Host mirrors: every size a Python ``int`` is needed for (storage growth, the
slice of the storage handed back, re-compression's per-sample slices) is read
from ``host_lengths`` / ``host_prompt_tokens``, plain lists updated alongside
the tensors, never from a device tensor: reading one (``int(t)``, ``.item()``,
``.tolist()``) would stall the host until the device catches up, in every layer
at every decoding step. The host knows these numbers anyway: the kept counts are
the shapes of the kept sets, and each decoding step appends the same number of
tokens to every sample.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from zipvl.host_transfer import to_device

# Decoding grows the storage geometrically so appends are amortised O(1):
# new capacity = max(needed, capacity * _GROWTH + _MIN_GROWTH).
_GROWTH = 1.5
_MIN_GROWTH = 16


class ZipVLLayer(CacheLayerMixin):
    """One decoder layer's compressed cache.

    ``keys``/``values`` ``[b, Hk, capacity, d]``; sample ``i`` holds ``lengths[i]``
    valid tokens at slots ``[0, lengths[i])``, in position order. ``logical_length``
    is the length of the uncompressed (padded) sequence seen so far.
    """

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.lengths: torch.Tensor | None = None
        # ``lengths`` as a Python list, and each sample's real prompt tokens (see the module
        # docstring); ``prompt_tokens`` is derived from the latter.
        self.host_lengths: list[int] = []
        self.host_prompt_tokens: list[int] = []
        self.logical_length = 0
        self.prefill_length = 0
        # True between a prefill ``update`` and the ``compress`` that follows it.
        self.awaiting_compression = False
        # Recent decoding queries, the probes of ``recompress_every`` (see attention.py).
        self.recent_queries: torch.Tensor | None = None
        self.decode_steps = 0

    # ---- transformers' layer interface -------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill: hold and return the full K/V. Decoding: append at ``lengths`` and return the storage."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.logical_length == 0:
            return self._start_prefill(key_states, value_states)
        if self.awaiting_compression:
            raise RuntimeError(
                "ZipVLCache: a prefill was cached but never compressed; the layer's attention "
                "implementation must be 'zipvl' (call zipvl.enable(model) before running the model)")
        return self._append(key_states, value_states)

    def get_seq_length(self) -> int:
        # Logical, not physical: generate and RoPE continue from the uncompressed length.
        return self.logical_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.logical_length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.lengths = self.recent_queries = None
        self.host_lengths, self.host_prompt_tokens = [], []
        self.logical_length = self.prefill_length = 0
        self.awaiting_compression = False
        self.decode_steps = 0
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("ZipVLCache cannot be cropped: dropped tokens are gone")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(
            "ZipVL does not support beam search (num_beams > 1); use greedy or sampling")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys is not None:
            rows = [sample for sample in range(self.keys.shape[0]) for _ in range(repeats)]
            self._select_batch(to_device(torch.tensor(rows), self.keys.device), rows)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.keys is not None:
            # One read of the indices per selection (not per step) keeps the host mirrors.
            self._select_batch(indices, [int(row) for row in indices.tolist()])

    def offload(self) -> None:
        super().offload()
        if self.lengths is not None:
            self.lengths = self.lengths.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        super().prefetch()
        if self.lengths is not None and self.lengths.device != self.device:
            self.lengths = self.lengths.to(self.device, non_blocking=True)

    # ---- ZipVL ------------------------------------------------------------------------

    def compress(self, kept_per_sample: list[torch.Tensor],
                 prompt_tokens: list[int] | None = None) -> None:
        """Keep only ``kept_per_sample[i]`` (``LongTensor[Hk, p_i]``, sorted slot indices) of sample ``i``.

        Called after prefill with positions in the padded prompt (``prompt_tokens``: the
        unpadded prompt length of each sample, for ``dense_tokens``), and by
        re-compression with slots of the current storage. Every head of a sample keeps
        ``p_i`` tokens.
        """
        if self.keys is None:
            raise RuntimeError("ZipVLLayer.compress called before any update")
        batch, num_kv_heads, _, head_dim = self.keys.shape
        if len(kept_per_sample) != batch:
            raise ValueError(f"compress needs one kept set per sample: got {len(kept_per_sample)} "
                             f"for batch {batch}")
        device = self.keys.device
        counts = [int(kept.shape[-1]) for kept in kept_per_sample]
        capacity = max(max(counts, default=0), 1)
        index = torch.zeros(batch, num_kv_heads, capacity, dtype=torch.long, device=device)
        # One copy per sample: the kept sets are ragged (p_i differ), so they are padded into
        # one index here and every later step runs batched; no copy reads a device value.
        for sample, kept in enumerate(kept_per_sample):
            if kept.shape[-1] > 0:
                index[sample, :, : kept.shape[-1]] = kept.to(device)
        lengths = to_device(torch.tensor(counts, dtype=torch.long), device)
        valid = torch.arange(capacity, device=device)[None, :] < lengths[:, None]
        gather_index = index[..., None].expand(-1, -1, -1, head_dim)
        # Slots past a sample's length are zeroed so no stale token can leak through a kernel.
        keep = valid[:, None, :, None]
        self.keys = torch.where(keep, self.keys.gather(2, gather_index), 0)
        self.values = torch.where(keep, self.values.gather(2, gather_index), 0)
        self.lengths, self.host_lengths = lengths, counts
        if prompt_tokens is not None:
            self.host_prompt_tokens = list(prompt_tokens)
        self.awaiting_compression = False

    @property
    def prompt_tokens(self) -> torch.Tensor | None:
        """Real (unpadded) prompt tokens per sample, ``LongTensor[b]`` on the CPU; None
        before a prefill."""
        if self.keys is None:
            return None
        return torch.tensor(self.host_prompt_tokens, dtype=torch.long)

    def dense_tokens(self) -> int:
        """Tokens an uncompressed cache would hold: unpadded prompts plus decoded tokens."""
        decoded = self.logical_length - self.prefill_length
        return sum(self.host_prompt_tokens) + decoded * len(self.host_prompt_tokens)

    def kept_tokens(self) -> torch.Tensor:
        """Tokens held per sample, ``LongTensor[b]`` (padding slots not counted)."""
        return torch.tensor(self.host_lengths, dtype=torch.long)

    def bytes_per_token(self) -> int:
        """K and V bytes of one token of one sample in this layer (all KV heads)."""
        if self.keys is None:
            return 0
        num_kv_heads, head_dim = self.keys.shape[1], self.keys.shape[3]
        return 2 * num_kv_heads * head_dim * self.keys.element_size()

    def kept_bytes(self) -> int:
        """Bytes the kept tokens occupy: ``sum_i lengths[i] x Hk x d x 2 x element size``."""
        return sum(self.host_lengths) * self.bytes_per_token()

    def allocated_bytes(self) -> int:
        """Bytes of the storage tensors, spare capacity included."""
        if self.keys is None:
            return 0
        return (self.keys.numel() * self.keys.element_size()
                + self.values.numel() * self.values.element_size())

    def remember_query(self, query: torch.Tensor, window: int) -> None:
        """Keep the last ``window`` decoding queries ``[b, H, q, d]`` as re-compression probes."""
        recent = query if self.recent_queries is None else torch.cat([self.recent_queries, query], 2)
        self.recent_queries = recent[:, :, -window:]

    # ---- internals --------------------------------------------------------------------

    def _start_prefill(self, key_states: torch.Tensor,
                       value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, num_tokens, _ = key_states.shape
        self.keys, self.values = key_states, value_states
        self.lengths = torch.full((batch,), num_tokens, dtype=torch.long, device=key_states.device)
        self.host_lengths = [num_tokens] * batch
        self.logical_length = self.prefill_length = num_tokens
        self.host_prompt_tokens = [num_tokens] * batch
        self.awaiting_compression = True
        self.recent_queries = None
        self.decode_steps = 0
        return key_states, value_states

    def _append(self, key_states: torch.Tensor,
                value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_kv_heads, num_new, head_dim = key_states.shape
        if batch != self.keys.shape[0]:
            raise ValueError(f"ZipVLCache holds a batch of {self.keys.shape[0]}, got {batch}")
        needed = max(self.host_lengths, default=0) + num_new
        capacity = self.keys.shape[2]
        if needed > capacity:
            self._grow(max(needed, int(capacity * _GROWTH) + _MIN_GROWTH))
        slots = self.lengths[:, None] + torch.arange(num_new, device=self.lengths.device)[None, :]
        index = slots[:, None, :, None].expand(batch, num_kv_heads, num_new, head_dim)
        self.keys.scatter_(2, index, key_states.to(self.keys.dtype))
        self.values.scatter_(2, index, value_states.to(self.values.dtype))
        self.lengths = self.lengths + num_new
        self.host_lengths = [length + num_new for length in self.host_lengths]
        self.logical_length += num_new
        return self.keys[:, :, :needed], self.values[:, :, :needed]

    def _grow(self, capacity: int) -> None:
        batch, num_kv_heads, old_capacity, head_dim = self.keys.shape
        shape = (batch, num_kv_heads, capacity, head_dim)
        keys = self.keys.new_zeros(shape)
        values = self.values.new_zeros(shape)
        keys[:, :, :old_capacity] = self.keys
        values[:, :, :old_capacity] = self.values
        self.keys, self.values = keys, values

    def _select_batch(self, indices: torch.Tensor, host_indices: list[int]) -> None:
        indices = indices.to(self.keys.device)
        self.keys = self.keys[indices]
        self.values = self.values[indices]
        self.lengths = self.lengths[indices]
        self.host_lengths = [self.host_lengths[row] for row in host_indices]
        self.host_prompt_tokens = [self.host_prompt_tokens[row] for row in host_indices]
        if self.recent_queries is not None:
            self.recent_queries = self.recent_queries[indices]


class ZipVLCache(Cache):
    """A transformers ``Cache`` of ``ZipVLLayer``s, created lazily one per decoder layer.

    Pass it under ``zipvl.cache_keyword(model)`` (``cache`` on transformers 5.24+,
    ``past_key_values`` before) or let ``zipvl.enable`` swap it in for the empty
    cache ``generate`` creates. ``get_seq_length()`` is the uncompressed length.
    """

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=ZipVLLayer)

    @property
    def is_compileable(self) -> bool:
        return False

    def kept_bytes(self) -> int:
        """K/V bytes of the kept tokens over all layers and samples."""
        return sum(layer.kept_bytes() for layer in self.layers)

    def dense_bytes(self) -> int:
        """K/V bytes the uncompressed cache would hold: every unpadded prompt token and
        every decoded token, in every layer."""
        return sum(layer.dense_tokens() * layer.bytes_per_token() for layer in self.layers)

    def allocated_bytes(self) -> int:
        """Bytes of the storage tensors, spare capacity included."""
        return sum(layer.allocated_bytes() for layer in self.layers)

    def kept_tokens(self) -> torch.Tensor:
        """``LongTensor[num_layers, b]``: tokens held per layer and sample."""
        if not self.layers:
            return torch.zeros(0, 0, dtype=torch.long)
        return torch.stack([layer.kept_tokens() for layer in self.layers])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(
            "ZipVL does not support beam search (num_beams > 1); use greedy or sampling")
