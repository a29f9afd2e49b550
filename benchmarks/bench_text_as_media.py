"""Benchmark: ``keep_text_tokens`` measured on a text stand-in for an image-heavy prompt.

Issue 13 asks what keeping every text token, the question included, and sparsifying
only the visual tokens does to answers: ZipVL's own setting (He et al., arXiv
2410.08584, Sec. 4: image-heavy prompts). No trained LVLM runs offline here, so the
one trained model, SmolLM2-135M-Instruct, stands in: in each question prompt the
1,024-token document plays the image (``zipvl.mark_media`` names its positions) and
the chat template and the question are the text. This is a proxy: a document's tokens
are not visual tokens, and how an LVLM's attention spreads over an image is not
measured by it.

Two layouts, each with its own dense answers:
* ``document first`` (the frontier's prompt; LLaVA's order: image, then question): the
  question sits in the last ``keep_last`` tokens, which every configuration keeps;
* ``question first`` (the question, then the document, then the answer): the question
  competes for the budget unless the option keeps it.

Each configuration runs with and without ``keep_text_tokens`` on the frontier's 16
documents (12 + 4 held out) and reports NLL, agreement, exact answers and title recall
against dense, per text family.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks import peers
from benchmarks.bench_fidelity import Prompts, evaluate, greedy_answer, read_continuation
from benchmarks.bench_frontier import (
    BENCHMARK_SOURCES,
    FULL_DOCUMENTS,
    HELD_OUT_DOCUMENTS,
    family_metrics,
)
from benchmarks.common import (
    add_threads_option,
    apply_threads,
    log,
    write_partial,
    write_result,
)
from benchmarks.corpus import HELD_OUT_SOURCE, Document, build_documents
from benchmarks.smollm2 import load_smollm2
from zipvl.config import ZipVLConfig

LAYOUTS = ("document first", "question first")
TAUS = (0.995, 0.975)
ANSWER_TOKENS = 32
NAME = "text-as-media"


def layout_prompt(tokenizer, document: Document, question: str,
                  question_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The chat prompt ``[1, L]`` and which of its positions are the document's ``[1, L]``."""
    messages = document.question_messages(question, question_first)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        return_tensors="pt")
    reference = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
    if not torch.equal(encoded["input_ids"], reference):
        raise RuntimeError(f"{document.name}: the template's tokens differ from its text's")
    start = text.index(document.context_text)
    end = start + len(document.context_text)
    offsets = encoded["offset_mapping"][0]
    # A token straddling the document's edge counts as text, so it is kept.
    inside = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    return encoded["input_ids"], inside[None]


def layout_reference(model, tokenizer, documents: list[Document],
                     question_first: bool) -> tuple[list[Prompts], list[dict]]:
    """Each document's prompts in one layout, and dense's answers to them."""
    prompts, rows = [], []
    for document in documents:
        built = [layout_prompt(tokenizer, document, q, question_first) for q in document.questions]
        answers = [greedy_answer(model, ids, ANSWER_TOKENS)[0] for ids, _ in built]
        prompts.append(Prompts([ids for ids, _ in built], answers, [media for _, media in built]))
        rows.append({"document": document.name, "source": document.source,
                     "prompt_tokens": [int(ids.shape[1]) for ids, _ in built],
                     "document_tokens": [int(media.sum()) for _, media in built],
                     "answers": [tokenizer.decode(a, skip_special_tokens=True) for a in answers]})
    return prompts, rows


@torch.inference_mode()
def text_kept_share(model, method: peers.Method, prompts: list[Prompts]) -> float:
    """The share of the text positions outside the last ``keep_last`` (the template, and
    the question where it comes first) that ``method`` keeps, over layers, KV heads and
    prompts: what ``keep_text_tokens`` would add back."""
    shares = []
    for prompt in prompts:
        for ids, is_media in zip(prompt.question_ids, prompt.question_media):
            kept: dict[int, torch.Tensor] = {}
            with peers.applied(model, method, kept=kept):
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
            text = (~is_media[0]).clone()
            text[max(ids.shape[1] - method.config.keep_last, 0):] = False
            positions = text.nonzero().flatten()
            for layer_kept in kept.values():
                shares.extend(float(torch.isin(positions, head).float().mean()) for head in layer_kept)
    return float(np.mean(shares))


def config_for(tau: float, keep_text_tokens: bool) -> ZipVLConfig:
    """The default at ``tau``, with or without the option."""
    return ZipVLConfig(tau=tau, keep_text_tokens=keep_text_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 documents of 256 tokens")
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--options", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="run without (off) and/or with (on) keep_text_tokens")
    parser.add_argument("--label", default=None,
                        help="written as text-as-media-LABEL (e.g. the default at budgets "
                             "matched to the option's)")
    add_threads_option(parser)
    args = parser.parse_args()
    name = f"{NAME}-{args.label}" if args.label else NAME
    options = [option == "on" for option in args.options]
    started = time.perf_counter()
    apply_threads(args.threads)
    model, tokenizer = load_smollm2()
    context_tokens = 256 if args.quick else 1024
    counts = (1, 1) if args.quick else (FULL_DOCUMENTS, HELD_OUT_DOCUMENTS)
    documents = (build_documents(tokenizer, context_tokens, 128, counts[0], BENCHMARK_SOURCES)
                 + build_documents(tokenizer, context_tokens, 128, counts[1], (HELD_OUT_SOURCE,)))
    families = {"benchmark": [d.name for d in documents if d.source in BENCHMARK_SOURCES],
                "held_out": [d.name for d in documents if d.source == HELD_OUT_SOURCE]}
    settings = {"context_tokens": context_tokens, "continuation_tokens": 128,
                "answer_tokens": ANSWER_TOKENS, "families": families, "layouts": args.layouts,
                "configs": {f"tau {tau}{', keep text' if keep else ''}": config_for(tau, keep).to_dict()
                            for tau in args.taus for keep in options}}
    with torch.inference_mode():
        dense_nll = [read_continuation(model, document)[0] for document in documents]
    nll_by_document = {d.name: nll for d, nll in zip(documents, dense_nll)}
    figures: dict = {"dense": {}, "runs": []}
    for layout in args.layouts:
        prompts, rows = layout_reference(model, tokenizer, documents, layout == "question first")
        figures["dense"][layout] = rows
        log(f"{layout}: dense answers for {len(documents)} documents")
        for tau in args.taus:
            for keep_text in options:
                run_name = f"{layout}, tau {tau}{', keep text' if keep_text else ''}"
                method = peers.Method(run_name, "zipvl", config_for(tau, keep_text))
                result = evaluate(model, tokenizer, method, documents, dense_nll, prompts, True,
                                  ANSWER_TOKENS, {"layout": layout, "tau": tau,
                                                  "keep_text_tokens": keep_text})
                result["by_family"] = {
                    family: family_metrics([r for r in result["per_document"]
                                            if r["document"] in members], nll_by_document)
                    for family, members in families.items() if members}
                # The budget the answers ran under (the prompts hold the template and question).
                result["answer_kept_ratio"] = float(np.mean(
                    [a["kept_ratio"] for r in result["per_document"] for a in r["answers"]]))
                if not keep_text:  # with the option every one is kept (its tests check it)
                    result["text_kept_share"] = text_kept_share(model, method, prompts)
                figures["runs"].append(result)
                write_partial(name, args.quick, settings, figures, started)
    write_result(name, args.quick, settings, figures, started)
    write_partial(name, args.quick, settings, figures, started).unlink()


if __name__ == "__main__":
    main()
