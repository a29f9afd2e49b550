"""Load an LVLM once, patch it with ZipVL, and generate for batches of rows.

A tiny preset is a checkpoint that ``zipvl.testing.tiny_model_path`` builds
offline and saves; it is then loaded with ``from_pretrained`` exactly like a
hub id or a local checkpoint, so the demo exercises the same code path as a
real model. ``trust_remote_code`` is passed only when the job asks for it.

A batch is generated together (left padding, one ``generate`` call). A row's own
faults (its media refused by the processor, a prompt too long for the context) are
found before generating and become error rows; a failure of ``generate`` itself is
the system's (``SystemFault``): it stops the job rather than being written as
finished error rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, LogitsProcessorList

from pipeline.errors import SystemFault, first_line
from pipeline.prompts import RowMedia, build_model_inputs, limit_image_tokens, limit_video_tokens
from pipeline.row_sampling import PerRowSampler

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to generate: weights on `device`, its processor, and how it was patched."""

    model: Any
    processor: Any
    family: str
    label: str
    device: torch.device
    zipvl_enabled: bool


@dataclass
class RowResult:
    """The generation outcome of one row; exactly one of `output` / `error` is set."""

    output: str | None = None
    error: str | None = None
    error_kind: str | None = None  # one of pipeline.errors.ERROR_KINDS when error is set
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    kept_ratio: float | None = None
    kept_ratio_per_layer: list[float] | None = field(default=None)


@dataclass(frozen=True)
class GenerationSettings:
    """What ``generate`` is called with (from the job's ``generation`` section)."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_section(cls, section: Any) -> GenerationSettings:
        return cls(
            max_new_tokens=section.max_new_tokens,
            do_sample=section.do_sample,
            temperature=section.temperature,
            top_p=section.top_p,
            seed=section.seed,
        )


def model_location(settings: Any) -> str:
    """The directory or hub id that ``from_pretrained`` reads for these model settings."""
    if settings.tiny is not None:
        from zipvl.testing import tiny_model_path

        return str(tiny_model_path(settings.tiny))
    return str(settings.name_or_path)


def load_model(settings: Any, zipvl_config: Any | None, device: str | torch.device,
               max_video_tokens: int | None = None) -> LoadedModel:
    """Load the model described by `settings` (``JobSpec.model_settings()``) onto `device`.

    `zipvl_config` (a ``zipvl.ZipVLConfig``) patches the language model; None runs dense.
    `max_video_tokens` caps one video's visual tokens (``spec.video``).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    device = torch.device(device)
    location = model_location(settings)
    common = hub_kwargs(settings)
    family = model_family(settings, AutoConfig.from_pretrained(location, **common))
    dtype = _DTYPES[settings.resolved_dtype(device.type == "cuda")]
    model = AutoModelForImageTextToText.from_pretrained(location, dtype=dtype, **common)
    model = model.to(device).eval()
    processor = load_processor(location, family, common)
    limit_image_tokens(processor, family, settings.max_image_tokens)
    limit_video_tokens(processor, family, max_video_tokens)
    if zipvl_config is not None:
        import zipvl

        model = zipvl.enable(model, zipvl_config)
    return LoadedModel(model, processor, family, settings.label, device, zipvl_config is not None)


def model_family(settings: Any, config: Any | None = None) -> str:
    """The family the job's model is: ``model.family``, or with ``auto`` its checkpoint
    config's ``model_type`` (`config` when already loaded, else read here)."""
    if settings.family != "auto":
        return settings.family
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_location(settings), **hub_kwargs(settings))
    return config.model_type


def load_processor(location: str, family: str, hub_kwargs: dict[str, Any]) -> Any:
    """The checkpoint's processor: the stock one, or where torchvision does not import (the
    stock one then cannot be built at all) the family's image-only processor with the
    torchvision-free video processor of ``pipeline.video_processing`` attached."""
    from transformers import AutoProcessor

    from pipeline.families import FAMILIES, torchvision_imports
    from pipeline.image_only_processors import IMAGE_ONLY_PROCESSORS

    family_info = FAMILIES[family]
    if family_info.image_only_processor is None or torchvision_imports():
        return AutoProcessor.from_pretrained(location, **hub_kwargs)
    processor = IMAGE_ONLY_PROCESSORS[family].from_pretrained(location, **hub_kwargs)
    if family_info.native_video:
        from pipeline.video_processing import attach_video_processor

        try:
            attach_video_processor(processor, location, family, hub_kwargs)
        except OSError as error:  # a checkpoint with no video settings at all reads images only
            logger.warning("%s has no video preprocessing settings (%s): it reads images only",
                           location, first_line(error))
    return processor


def generate_rows(
    loaded: LoadedModel,
    texts: Sequence[str],
    media: Sequence[RowMedia | Sequence[Image.Image]],
    generation: GenerationSettings,
    row_ids: Sequence[str] | None = None,
) -> list[RowResult]:
    """Generate for a batch of rows, one ``RowResult`` per row, in order.

    `row_ids` seed each row's own sampling stream (``row_sampling``), so a sampled
    row's text does not depend on its batch; they are needed when sampling.

    Row faults become error rows, found before anything is generated: the processor
    refusing a row (``preprocess``) and a prompt that leaves no room for
    ``max_new_tokens`` in the model's context (``too_long``). Everything that fails
    after that is the system's: ``SystemFault`` is raised and no row of the batch is
    answered. Out of memory splits the batch in halves, down to single rows; a row that
    does not fit even alone is a ``too_large`` error row.
    """
    if generation.do_sample and row_ids is None:
        raise ValueError("sampling needs the row ids: each row has its own random stream")
    results: list[RowResult | None] = [None] * len(texts)
    rows, inputs = _admissible_rows(loaded, texts, media, generation, results)
    if rows:
        answers = _generate_halving(loaded, rows, inputs, texts, media, generation, row_ids)
        for row in rows:
            results[row] = answers[row]
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _generate_halving(loaded: LoadedModel, rows: list[int], inputs: BatchFeature | None,
                      texts: Sequence[str], media: Sequence[RowMedia | Sequence[Image.Image]],
                      generation: GenerationSettings,
                      row_ids: Sequence[str] | None) -> dict[int, RowResult]:
    """Answers of `rows` (their model `inputs` when already built), halving on out of memory."""
    if inputs is None:
        inputs = build_model_inputs(loaded.processor, [texts[row] for row in rows],
                                    [media[row] for row in rows])
    ids = None if row_ids is None else [row_ids[row] for row in rows]
    try:
        return dict(zip(rows, _generate_or_fault(loaded, inputs, generation, ids)))
    except torch.OutOfMemoryError as error:
        _release_memory(loaded.device)
        if len(rows) == 1:
            return {rows[0]: RowResult(
                error=_describe("too large for this model on this device: out of memory "
                                "generating it alone", error), error_kind="too_large")}
        half = len(rows) // 2
        logger.warning("batch of %d ran out of memory; retrying it as %d + %d rows",
                       len(rows), half, len(rows) - half)
        return {**_generate_halving(loaded, rows[:half], None, texts, media, generation, row_ids),
                **_generate_halving(loaded, rows[half:], None, texts, media, generation, row_ids)}


def _admissible_rows(loaded: LoadedModel, texts: Sequence[str],
                     media: Sequence[RowMedia | Sequence[Image.Image]], generation: GenerationSettings,
                     results: list[RowResult | None]) -> tuple[list[int], BatchFeature | None]:
    """The rows fit to generate and their model inputs; the others get their error row
    in `results`. The processor runs once per batch unless a row has to be dropped."""
    rows = list(range(len(texts)))
    inputs = None
    try:
        inputs = build_model_inputs(loaded.processor, texts, media) if rows else None
    except Exception as batch_error:
        for row in list(rows):  # which row did the processor refuse? Ask one at a time.
            try:
                build_model_inputs(loaded.processor, [texts[row]], [media[row]])
            except Exception as error:
                results[row] = RowResult(error=_describe("the processor refused the row", error),
                                         error_kind="preprocess")
                rows.remove(row)
        if len(rows) == len(texts):  # every row passes alone: the failure is not theirs
            raise SystemFault(_describe("the processor failed on a batch whose rows each pass "
                                        "alone", batch_error)) from batch_error
    context = context_length(loaded.model)
    if inputs is not None and context is not None:
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        for row, tokens in zip(list(rows), prompt_tokens):
            if tokens + generation.max_new_tokens > context:
                results[row] = RowResult(
                    error=f"the prompt has {tokens} tokens; with max_new_tokens "
                          f"{generation.max_new_tokens} that exceeds the model's context of "
                          f"{context}", error_kind="too_long", prompt_tokens=int(tokens))
                rows.remove(row)
    if rows and (inputs is None or len(rows) < len(texts)):
        inputs = build_model_inputs(loaded.processor, [texts[i] for i in rows],
                                    [media[i] for i in rows])
    return rows, inputs


def context_length(model: Any) -> int | None:
    """The language model's maximum positions (None when its config does not say)."""
    text_config = model.config.get_text_config(decoder=True)
    return getattr(text_config, "max_position_embeddings", None)


def _generate_or_fault(loaded: LoadedModel, inputs: BatchFeature, generation: GenerationSettings,
                       row_ids: Sequence[str] | None) -> list[RowResult]:
    """``_generate_batch``; any failure is a ``SystemFault``, except out of memory, which
    the caller answers by halving the batch."""
    batch = int(inputs["input_ids"].shape[0])
    try:
        return _generate_batch(loaded, inputs, generation, row_ids)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        raise SystemFault(_describe(f"generation failed for a batch of {batch} row(s), "
                                    "which is not the rows' fault", error)) from error


@torch.inference_mode()
def _generate_batch(loaded: LoadedModel, inputs: BatchFeature, generation: GenerationSettings,
                    row_ids: Sequence[str] | None) -> list[RowResult]:
    inputs = inputs.to(loaded.device)
    for name in ("pixel_values", "pixel_values_videos"):
        if name in inputs and inputs[name].is_floating_point():
            inputs[name] = inputs[name].to(loaded.model.dtype)
    tokenizer = loaded.processor.tokenizer
    # Sampling is done per row by PerRowSampler; generate itself always runs greedy.
    kwargs: dict[str, Any] = {"max_new_tokens": generation.max_new_tokens, "do_sample": False}
    if generation.do_sample:
        kwargs["logits_processor"] = LogitsProcessorList([PerRowSampler(
            row_ids, generation.seed, generation.temperature, generation.top_p, loaded.device)])
    if loaded.model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    if loaded.zipvl_enabled:
        import zipvl

        # Handed over explicitly so generation never depends on the decoder hook.
        kwargs.update(zipvl.cache_kwargs(loaded.model))
    sequences = loaded.model.generate(**inputs, **kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = sequences[:, prompt_length:].cpu()
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    stop_ids = _stop_token_ids(loaded.model.generation_config, tokenizer)
    kept_per_layer = _kept_ratio_per_layer(loaded, len(prompt_tokens))
    results = []
    for row, row_tokens in enumerate(new_tokens.tolist()):
        length = _generated_length(row_tokens, stop_ids)
        text = tokenizer.decode(row_tokens[:length], skip_special_tokens=True).strip()
        per_layer = None if kept_per_layer is None else kept_per_layer[:, row].tolist()
        results.append(
            RowResult(
                output=text,
                prompt_tokens=int(prompt_tokens[row]),
                output_tokens=length,
                kept_ratio=None if per_layer is None else float(np.mean(per_layer)),
                kept_ratio_per_layer=per_layer,
            )
        )
    return results


def _kept_ratio_per_layer(loaded: LoadedModel, batch: int) -> np.ndarray | None:
    """``[num_layers, batch]`` kept ratios of the last prefill, or None when dense."""
    if not loaded.zipvl_enabled:
        return None
    import zipvl

    kept = np.asarray(zipvl.stats(loaded.model).kept_ratio, dtype=np.float64)
    if kept.ndim != 2 or kept.shape[1] != batch:
        raise RuntimeError(f"zipvl.stats kept_ratio has shape {kept.shape}, expected [layers, {batch}]")
    return kept


def _stop_token_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _generated_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Tokens the model generated: up to and including the first stop token (padding follows it)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def hub_kwargs(settings: Any) -> dict[str, Any]:
    """``from_pretrained`` keywords of the job's model: remote code only when asked."""
    kwargs: dict[str, Any] = {}
    if settings.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if settings.revision:
        kwargs["revision"] = settings.revision
    return kwargs


def _describe(what: str, error: BaseException) -> str:
    return f"{what}: {type(error).__name__}: {first_line(error)}"[:500]


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
