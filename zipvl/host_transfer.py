"""Host values onto the device without making the host wait for the device.

A plain ``tensor.to("cuda")`` from pageable host memory ends in
``cudaStreamSynchronize`` (PyTorch's ``copy_`` with ``non_blocking=False``), so
the host stalls until every kernel queued before it has run. A copy from pinned
memory with ``non_blocking=True`` is queued like a kernel instead; PyTorch's
caching host allocator keeps the pinned buffer alive until the copy is done
(``torch.cuda`` semantics, "pinned memory buffers"). ZipVL moves only a few
integers this way (kept counts, probe positions, packed sequence offsets).
"""

from __future__ import annotations

import torch


def to_device(values: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``values`` (a CPU tensor) on ``device``, queued without a host synchronisation."""
    if device is None:
        return values
    device = torch.device(device)
    if device.type == values.device.type and (device.index is None
                                              or device.index == values.device.index):
        return values
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)
