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

from zipvl.ranking import every_position, score_probes
from zipvl.scores import normalize_summed, pool_scores
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
    """Where one unpadded sample's media tokens are: ``is_media [n]`` (bool, on the model's
    device) and, read once per prefill, how many tokens are kept whatever the scores
    (``forced``: text tokens and the last ``keep_last``) and how many compete (``candidates``)."""

    is_media: torch.Tensor
    forced: int
    candidates: int


def sample_media(is_media: list[torch.Tensor], keep_last: int) -> list[SampleMedia]:
    """``SampleMedia`` of each sample's ``is_media [n_i]``, with one host read for them all."""
    if not is_media:
        return []
    counts = [torch.stack([mask.sum(), mask[:max(mask.numel() - keep_last, 0)].sum()])
              for mask in is_media]
    host = torch.stack(counts).tolist()
    return [SampleMedia(mask, forced=mask.numel() - candidates, candidates=candidates)
            for mask, (_, candidates) in zip(is_media, host)]


def keep_text_and_ranked_media(query: torch.Tensor, key: torch.Tensor, media: SampleMedia,
                               config: Any, layer_idx: int, scale: float) -> torch.Tensor:
    """Kept positions ``[Hk, p]`` (rows sorted): every forced position, then the top media.

    ``query [H, n, d]`` after RoPE and ``key [Hk, n, d]`` of one unpadded sample.
    """
    num_tokens = key.shape[1]
    if media.candidates == 0 or config.tau >= 1.0:
        return every_position(key)
    probes = score_probes(query, key, config, layer_idx, scale)
    candidate = media.is_media.clone()
    candidate[max(num_tokens - config.keep_last, 0):] = False
    with record_function("zipvl.budget"):
        scores = probes.accumulated().double()
        ranked = torch.sort(scores.masked_fill(~candidate, float("-inf")), descending=True).values
        ranked = ranked[:media.candidates]
        threshold = config.tau * ranked.sum()
        # The fewest candidates reaching the threshold; the count is a shape, so this is
        # the selection's one host read, as in ``zipvl.budget.adaptive_budget``.
        below = int((torch.cumsum(ranked, dim=0) < threshold).sum().item())
        chosen = min(below + 1, media.candidates)
    with record_function("zipvl.importance"):
        if config.ranking == "recent":
            summed = probes.recent_sums
            positions = probes.positions[probes.positions.numel() - probes.num_recent:]
        else:
            summed = probes.recent_sums + probes.earlier_sums
            positions = probes.positions
        importance = normalize_summed(summed, positions, probes.group)
        if config.score_pooling > 1:
            importance = pool_scores(importance, config.score_pooling)
        importance = importance.float().masked_fill(~candidate, float("inf"))
    with record_function("zipvl.selection"):
        return select_tokens(importance, media.forced + chosen, config.keep_last, config.selection)
