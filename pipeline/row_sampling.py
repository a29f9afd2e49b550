"""Sampling that depends on the row, not on its batch: one random stream per row id.

transformers' ``do_sample`` draws every row's tokens from one global generator, so
a sampled row's text would depend on which rows share its batch, and a resume
(which batches rows differently) would change it. Instead the pipeline generates
greedily over logits this processor has already sampled: per row, transformers'
own temperature and top-p warpers, then one draw from a ``torch.Generator`` seeded
from the job's seed and the row's id; every other token is masked out, so the
greedy step takes exactly that draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper


def row_seed(seed: int, row_id: str) -> int:
    """A 63-bit seed from the job's seed and a row id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class PerRowSampler(LogitsProcessor):
    """Samples each row's next token from its own generator; returns logits that keep
    only the sampled token (``-inf`` elsewhere)."""

    def __init__(self, row_ids: Sequence[str], seed: int, temperature: float, top_p: float,
                 device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(row_seed(seed, row_id))
                           for row_id in row_ids]
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probabilities = torch.softmax(scores.float(), dim=-1)
        sampled = torch.cat([torch.multinomial(probabilities[row], 1, generator=generator)
                             for row, generator in enumerate(self.generators)])
        only_sampled = torch.full_like(scores, float("-inf"))
        return only_sampled.scatter_(1, sampled[:, None], 0.0)
