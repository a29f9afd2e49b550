"""Keep every text token of an LVLM prompt; only the visual tokens compete for the budget.

An *extension* (``ZipVLConfig.keep_text_tokens``): ZipVL (He et al., arXiv 2410.08584)
treats vision and text tokens alike, and ``shared/ZIPVL.md`` lists "sparsifying only
visual tokens in LVLM prompts (text tokens always kept)" among the ideas to measure.
The image and video placeholder positions of the prompt (the model config's
``image_token_id`` / ``video_token_id``, as the processor expanded them) are the
candidates; every other position, and the last ``keep_last``, is kept. The budget is
the adaptive one (Eq. 6) restricted to the candidates: the fewest of them holding
``tau`` of the probes' attention that falls on candidates. They are ranked as
``config.ranking`` ranks every token (``zipvl.ranking.keep_ranked``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function

from zipvl.budget import adaptive_budget
from zipvl.ranking import every_position, importance, score_probes
from zipvl.select import select_tokens

# Config attributes naming an LVLM's media placeholder tokens (LLaVA's older configs
# spell them ``*_index``).
MEDIA_TOKEN_ATTRIBUTES = ("image_token_id", "video_token_id", "image_token_index", "video_token_index")


def media_token_ids(model_config: Any) -> tuple[int, ...]:
    """The placeholder token ids of ``model_config``'s images and videos (empty for a text model)."""
    ids = {getattr(model_config, name, None) for name in MEDIA_TOKEN_ATTRIBUTES}
    return tuple(sorted(token for token in ids if isinstance(token, int) and token >= 0))


@dataclass(frozen=True)
class SampleMedia:
    """One unpadded sample's media tokens that compete for the budget: ``candidate [n]``
    (bool, on the model's device: media tokens outside the last ``keep_last``) and, read
    once per prefill, how many tokens are kept whatever the scores (``forced``: text
    tokens and the last ``keep_last``) and how many compete (``candidates``)."""

    candidate: torch.Tensor
    forced: int
    candidates: int


def sample_media(is_media: list[torch.Tensor], keep_last: int) -> list[SampleMedia]:
    """``SampleMedia`` of each sample's ``is_media [n_i]``, with one host read for them all."""
    if not is_media:
        return []
    candidate_masks = []
    for mask in is_media:
        candidate = mask.clone()
        candidate[max(mask.numel() - keep_last, 0):] = False
        candidate_masks.append(candidate)
    counts = torch.stack([candidate.sum() for candidate in candidate_masks]).tolist()
    return [SampleMedia(candidate, forced=candidate.numel() - count, candidates=count)
            for candidate, count in zip(candidate_masks, counts)]


def keep_text_and_ranked_media(query: torch.Tensor, key: torch.Tensor, media: SampleMedia,
                               config: Any, layer_idx: int, scale: float) -> torch.Tensor:
    """Kept positions ``[Hk, p]`` (rows sorted): every forced position, then the top media.

    ``query [H, n, d]`` after RoPE and ``key [Hk, n, d]`` of one unpadded sample.
    """
    if media.candidates == 0 or config.tau >= 1.0:
        return every_position(key)
    probes = score_probes(query, key, config, layer_idx, scale)
    with record_function("zipvl.budget"):
        # Eq. 6 over the candidates alone: the others count as no attention at all.
        scores = probes.accumulated().double().masked_fill(~media.candidate, 0.0)
        chosen = min(adaptive_budget(scores, scores.sum(), config.tau, keep_last=0),
                     media.candidates)
    ranked = importance(probes, config).float().masked_fill(~media.candidate, float("inf"))
    with record_function("zipvl.selection"):
        return select_tokens(ranked, media.forced + chosen, config.keep_last, config.selection)
