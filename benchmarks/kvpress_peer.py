"""NVIDIA kvpress presses as peers of ZipVL, run in their own environment.

kvpress (https://github.com/NVIDIA/kvpress, PyPI ``kvpress``) 0.5.5 pins
``transformers<5.3``, older than the 5.23 this project needs, so it lives in
``<repo>/.cache/kvpress-venv`` (``--setup`` creates it: CPU torch 2.13 first,
then kvpress, which brings transformers 5.2). ``bench_fidelity`` runs this
module there as a subprocess with a request file (documents, budgets) and reads
the result file back; this module imports nothing from ``zipvl``.

Each press compresses the cache during prefill only (a forward hook on every
attention layer), to ``compression_ratio = 1 - r`` where ``r`` is the mean kept
ratio ZipVL reached at that tau with dense prefill, so the budgets match. The
continuation and the answers are then decoded outside the press with explicit
positions continuing from the uncompressed length, as kvpress's own pipeline
does. Answers are question-aware: the whole chat prompt (document + question) is
prefilled under the press, as ZipVL sees it, and greedy decoding follows.
Figures are relative to the dense model run in the same environment.

    python -m benchmarks.kvpress_peer --setup
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from benchmarks.corpus import TITLE_QUESTION, build_documents
from benchmarks.metrics import (
    continuation_nll,
    exact_match,
    prefix_agreement,
    token_agreement,
    word_recall,
)
from benchmarks.smollm2 import CACHE_DIR, converted_dir

VENV = CACHE_DIR / "kvpress-venv"
KVPRESS_SPEC = "kvpress==0.5.5"
TORCH_SPEC = "torch==2.13.0"
PRESSES = ("ExpectedAttentionPress", "SnapKVPress", "StreamingLLMPress")


def setup() -> None:
    """Create the kvpress environment (CPU torch first, so no CUDA build is pulled)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", TORCH_SPEC], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", KVPRESS_SPEC], check=True)


def _model_and_tokenizer():
    from transformers import AutoTokenizer, LlamaForCausalLM

    directory = converted_dir()
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                             attn_implementation="sdpa")
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(directory))


def _kept_ratio(cache, num_tokens: int) -> float:
    lengths = [layer.keys.shape[2] for layer in cache.layers]
    return sum(lengths) / (len(lengths) * num_tokens)


@torch.inference_mode()
def _read_continuation(model, press, context_ids, continuation_ids) -> tuple[float, float]:
    from transformers import DynamicCache

    cache = DynamicCache()
    num_tokens = context_ids.numel()
    with press(model) if press is not None else _nothing():
        prefill = model(input_ids=context_ids[None], past_key_values=cache, logits_to_keep=1)
    kept = _kept_ratio(cache, num_tokens)
    positions = torch.arange(num_tokens, num_tokens + continuation_ids.numel() - 1)[None]
    read = model(input_ids=continuation_ids[None, :-1], past_key_values=cache,
                 position_ids=positions)
    return continuation_nll(prefill.logits[0, -1], read.logits[0], continuation_ids), kept


@torch.inference_mode()
def _greedy(model, press, prompt_ids, answer_tokens: int, stops: set[int]) -> list[int]:
    from transformers import DynamicCache

    cache = DynamicCache()
    num_tokens = prompt_ids.shape[1]
    with press(model) if press is not None else _nothing():
        output = model(input_ids=prompt_ids, past_key_values=cache, logits_to_keep=1)
    tokens = [int(output.logits[0, -1].argmax())]
    for step in range(answer_tokens - 1):
        if tokens[-1] in stops:
            break
        output = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache,
                       position_ids=torch.tensor([[num_tokens + step]]))
        tokens.append(int(output.logits[0, -1].argmax()))
    return tokens


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run(request: dict) -> dict:
    import kvpress

    settings = request["settings"]
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    model, tokenizer = _model_and_tokenizer()
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    # ``sources``: [[source names], count] groups, as bench_frontier builds its families.
    groups = settings.get("sources") or [[["kjv", "pyref"], settings["documents"]]]
    documents = [document for sources, count in groups
                 for document in build_documents(tokenizer, settings["context_tokens"],
                                                 settings["continuation_tokens"], count,
                                                 tuple(sources))]
    answer_tokens = settings["answer_tokens"]
    answer_taus = set(settings["answer_taus"])
    prompts = [[d.question_prompt_ids(tokenizer, q) for q in d.questions] for d in documents]

    dense_nll = [_read_continuation(model, None, d.context_ids, d.continuation_ids)[0]
                 for d in documents]
    dense_answers = [[_greedy(model, None, ids, answer_tokens, stops) for ids in doc_prompts]
                     for doc_prompts in prompts]
    import transformers

    result = {"status": "ok", "kvpress": kvpress.__version__ if hasattr(kvpress, "__version__")
              else "0.5.5", "transformers": transformers.__version__, "torch": torch.__version__,
              "documents": [d.name for d in documents], "dense_nll": dense_nll, "runs": []}
    presses = PRESSES[:2] if request.get("quick") else PRESSES
    for tau_text, ratio in request["budgets"].items():
        tau = float(tau_text)
        for press_name in presses:
            started = time.perf_counter()
            press = getattr(kvpress, press_name)(compression_ratio=max(0.0, 1.0 - ratio))
            per_doc = []
            for index, document in enumerate(documents):
                nll, kept = _read_continuation(model, press, document.context_ids,
                                               document.continuation_ids)
                row = {"document": document.name, "nll": nll,
                       "nll_increase": nll / dense_nll[index] - 1.0, "kept_ratio": kept}
                if tau in answer_taus:
                    row["answers"] = []
                    for question, ids, reference in zip(document.questions, prompts[index],
                                                        dense_answers[index]):
                        tokens = _greedy(model, press, ids, answer_tokens, stops)
                        text = tokenizer.decode(tokens, skip_special_tokens=True)
                        row["answers"].append({
                            "exact_match": exact_match(reference, tokens, answer_tokens, stops),
                            "agreement": token_agreement(reference, tokens, answer_tokens, stops),
                            "prefix_agreement": prefix_agreement(reference, tokens,
                                                                 answer_tokens, stops),
                            "title_recall": (word_recall(document.title, text)
                                             if question == TITLE_QUESTION else None),
                            "answer": text})
                per_doc.append(row)
            entry = {"press": press_name, "tau": tau, "target_ratio": ratio,
                     "nll_increase": sum(r["nll"] for r in per_doc) / sum(dense_nll) - 1.0,
                     "kept_ratio": sum(r["kept_ratio"] for r in per_doc) / len(per_doc),
                     "seconds": time.perf_counter() - started, "per_document": per_doc}
            answers = [a for r in per_doc for a in r.get("answers", [])]
            if answers:
                for key in ("exact_match", "agreement", "prefix_agreement"):
                    entry[key] = sum(float(a[key]) for a in answers) / len(answers)
                recalls = [a["title_recall"] for a in answers if a["title_recall"] is not None]
                entry["title_recall"] = sum(recalls) / len(recalls)
            result["runs"].append(entry)
            print(f"kvpress {press_name:<24} tau={tau} kept {entry['kept_ratio']:.3f} "
                  f"NLL {100 * entry['nll_increase']:+.2f}%"
                  + (f" agree {entry['agreement']:.2f}" if answers else ""), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="kvpress peers (own environment)")
    parser.add_argument("--setup", action="store_true", help="create .cache/kvpress-venv")
    parser.add_argument("--request")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    with open(args.request, encoding="utf-8") as handle:
        request = json.load(handle)
    try:
        result = run(request)
    except Exception as error:  # a failed peer is reported in the result, not fatal
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
