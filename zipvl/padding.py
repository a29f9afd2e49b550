"""Where each sample's real tokens sit in a padded batch, read with one host transfer.

ZipVL runs per sample on the unpadded tokens (``shared/ZIPVL.md``: "padding
positions never count as tokens"), so the prefill needs each sample's token
count as a Python ``int`` (it is a shape). The 2-D padding mask transformers
hands the attention function (its flash-attention convention) is a device
tensor; this module reads what the host needs from it in a single
``.tolist()`` (one synchronisation per prefill, cached across layers by the
caller), not one ``bool(...)`` / ``nonzero`` per sample per layer.

Left padding (what ``generate`` needs) and right padding leave each sample's real
tokens one contiguous run; those samples are plain slices of the batch, no
gather. A mask with holes falls back to the positions of its real tokens,
found by a stable sort whose length is the known count (no ``nonzero``, whose
output size the device would have to report back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zipvl.host_transfer import to_device


@dataclass(frozen=True)
class PaddingLayout:
    """The real tokens of every sample of a ``[b, n]`` padded batch.

    counts: real tokens per sample. starts: the first real position of a sample
    whose real tokens are the contiguous run ``[start, start + count)``, else
    ``None``. positions: for the other samples, ``LongTensor[count]`` of their
    real positions (sorted), else ``None``.
    """

    num_tokens: int
    counts: list[int]
    starts: list[int | None]
    positions: list[torch.Tensor | None]

    @classmethod
    def unpadded(cls, batch: int, num_tokens: int) -> PaddingLayout:
        return cls(num_tokens, [num_tokens] * batch, [0] * batch, [None] * batch)

    def take(self, tensor: torch.Tensor, sample: int) -> torch.Tensor:
        """``tensor [b, h, n, d]`` -> sample's real tokens ``[h, count, d]`` (a view when contiguous)."""
        start = self.starts[sample]
        if start is not None:
            return tensor[sample, :, start:start + self.counts[sample]]
        return tensor[sample].index_select(1, self.positions[sample])

    def put(self, output: torch.Tensor, sample: int, values: torch.Tensor) -> None:
        """Write ``values [h, count, d]`` back at the sample's real positions of ``output [b, h, n, d]``."""
        start = self.starts[sample]
        if start is not None:
            output[sample, :, start:start + self.counts[sample]] = values
        else:
            output[sample].index_copy_(1, self.positions[sample], values.to(output.dtype))

    def in_prompt(self, sample: int, kept: torch.Tensor) -> torch.Tensor:
        """Kept positions among the sample's real tokens -> positions in the padded prompt."""
        start = self.starts[sample]
        if start is not None:
            return kept + start if start else kept
        return self.positions[sample][kept]


def padding_layout(valid: torch.Tensor | None, batch: int, num_tokens: int) -> PaddingLayout:
    """The layout of ``valid [b, n]`` (bool, True = real token; ``None``: no padding)."""
    if valid is None:
        return PaddingLayout.unpadded(batch, num_tokens)
    counts = valid.sum(dim=1)
    # argmax returns the first maximal index: the first real token (0 for an empty row).
    first = valid.to(torch.uint8).argmax(dim=1)
    slots = torch.arange(num_tokens, device=valid.device)[None, :]
    run = (slots >= first[:, None]) & (slots < (first + counts)[:, None])
    contiguous = (run == valid).all(dim=1)
    # The one host synchronisation of a prefill: counts are shapes, and which samples are
    # slices decides what runs.
    host_counts, host_first, host_contiguous = torch.stack(
        [counts, first, contiguous.to(counts.dtype)]).tolist()
    starts = [start if is_run else None for start, is_run in zip(host_first, host_contiguous)]
    positions: list[torch.Tensor | None] = [None] * batch
    scattered = [sample for sample, start in enumerate(starts) if start is None]
    if scattered:
        # Stable sort of "is padding": real positions first, in order; the first count are real.
        rows = valid.index_select(0, to_device(torch.tensor(scattered), valid.device))
        order = torch.sort((~rows).to(torch.uint8), dim=1, stable=True).indices
        for row, sample in enumerate(scattered):
            positions[sample] = order[row, :host_counts[sample]]
    return PaddingLayout(num_tokens, host_counts, starts, positions)
