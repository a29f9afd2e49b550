"""Fidelity measures against the dense model: continuation NLL and greedy agreement.

Pure functions on tensors and token lists (torch only), shared by the ZipVL
fidelity benchmark and the kvpress runner, which lives in another environment.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F


def continuation_nll(first_logits: torch.Tensor, continuation_logits: torch.Tensor,
                     continuation_ids: torch.Tensor) -> float:
    """Mean negative log likelihood (nats/token) of ``continuation_ids [m]``.

    ``first_logits [V]`` are the prompt's last logits (they predict token 0);
    ``continuation_logits [m - 1, V]`` come from reading tokens ``0..m-2`` through
    the cache and predict tokens ``1..m-1``.
    """
    logits = torch.cat([first_logits[None], continuation_logits], dim=0).float()
    return float(F.cross_entropy(logits, continuation_ids.to(logits.device)))


def _padded(tokens: list[int], length: int, stop_ids: set[int]) -> list[int]:
    """The first ``length`` tokens, cut after a stop token and padded with -1."""
    cut: list[int] = []
    for token in tokens[:length]:
        cut.append(token)
        if token in stop_ids:
            break
    return cut + [-1] * (length - len(cut))


def token_agreement(reference: list[int], candidate: list[int], length: int,
                    stop_ids: set[int]) -> float:
    """Share of the first ``length`` positions where the two greedy outputs agree.

    After a stop token both are padded, so two answers that end together agree there.
    """
    a, b = _padded(reference, length, stop_ids), _padded(candidate, length, stop_ids)
    return sum(x == y for x, y in zip(a, b)) / length


def prefix_agreement(reference: list[int], candidate: list[int], length: int,
                     stop_ids: set[int]) -> float:
    """Length of the common prefix of the first ``length`` tokens, over ``length``."""
    a, b = _padded(reference, length, stop_ids), _padded(candidate, length, stop_ids)
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common / length


def exact_match(reference: list[int], candidate: list[int], length: int,
                stop_ids: set[int]) -> bool:
    """The first ``length`` tokens (up to a stop token) are identical."""
    return _padded(reference, length, stop_ids) == _padded(candidate, length, stop_ids)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_recall(reference: str, answer: str) -> float:
    """Share of the reference's words (lower case, alphanumeric) present in the answer.

    A task score against the truth rather than against the dense model: used for
    the title question, whose answer is known.
    """
    wanted = _words(reference)
    present = set(_words(answer))
    return sum(word in present for word in wanted) / len(wanted) if wanted else 1.0
