"""Extracted blocks cut into pieces small enough to embed and to quote in a prompt.

Pieces follow the document's structure: blocks under one heading are packed together, a new
heading starts a new piece, and only a block too long for one piece is cut, at sentence ends (and
line breaks), then at spaces, then, for a "word" longer than a piece, between characters.

Every string is counted with `count_tokens` at most a few times, so a real tokenizer (~50 µs a
call) stays affordable; packing adds up the counts of parts, and the joined text of each piece
is counted once more to make sure it is within `max_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

from agents.knowledge.extract import Block

MIN_MAX_TOKENS = 16
# Cutting a long word between characters looks at most this many characters per token of the
# limit, so a megabyte without spaces is not counted in halves again and again.
_CHARACTERS_PER_TOKEN = 32

_SENTENCE_END = re.compile(r"\s*\n|(?<=[.!?])\s+")  # the whitespace after a sentence or line
_WORD = re.compile(r"\S+")

Counter = Callable[[str], int]


@dataclass(frozen=True)
class Piece:
    """One retrievable piece of a document; `position` is its 0-based index in the document."""

    text: str
    heading: str
    position: int
    tokens: int


@dataclass(frozen=True)
class _Unit:
    """A part that is never cut again: a whole block, or a sentence (or words) of a long one."""

    text: str
    tokens: int
    joiner: str  # what separates it from the unit before it in the document


def word_tokens(text: str) -> int:
    """A fallback token count when no tokenizer is at hand: 1.3 tokens a word, rounded up."""
    return (13 * len(text.split()) + 9) // 10  # integers: 1.3 * 10 is 13.000000000000002


def chunk(
    blocks: list[Block], *, max_tokens: int, overlap: int, count_tokens: Counter
) -> list[Piece]:
    """`blocks` packed into pieces of at most `max_tokens` tokens by `count_tokens`. A section (a
    run of blocks under one heading) that spills into several pieces repeats up to `overlap`
    tokens of each piece at the start of the next; less when the next part leaves no room."""
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be at least {MIN_MAX_TOKENS}, not {max_tokens}")
    if not 0 <= overlap < max_tokens // 2:
        raise ValueError(
            f"overlap must be at least 0 and less than half of max_tokens "
            f"({max_tokens // 2} for max_tokens={max_tokens}), not {overlap}"
        )
    texts: list[tuple[str, str, int]] = []
    written = (block for block in blocks if block.text.strip())
    for heading, section in groupby(written, key=lambda block: block.heading):
        units = [
            unit
            for block in section
            for unit in _units(block.text.strip(), max_tokens, overlap, count_tokens)
        ]
        for text, tokens in _pack(units, max_tokens, overlap, count_tokens):
            texts.append((heading, text, tokens))
    return [
        Piece(text=text, heading=heading, position=position, tokens=tokens)
        for position, (heading, text, tokens) in enumerate(texts)
    ]


def _units(text: str, limit: int, overlap: int, count: Counter) -> list[_Unit]:
    """A block as one unit when it fits in `limit`, else its sentences, a sentence longer than
    `limit - overlap` cut further: the piece it starts then has room for the overlap."""
    tokens = count(text)
    if tokens <= limit:
        return [_Unit(text, tokens, "\n\n")]
    limit -= overlap
    units = []
    joiner = "\n\n"
    for sentence, after in _sentences(text):
        tokens = count(sentence)
        if tokens <= limit:
            units.append(_Unit(sentence, tokens, joiner))
        else:
            for index, (part, part_tokens) in enumerate(_cut(sentence, limit, count)):
                units.append(_Unit(part, part_tokens, joiner if index == 0 else " "))
        joiner = after
    return units


def _sentences(text: str) -> list[tuple[str, str]]:
    """Each sentence or line of `text` with the whitespace that follows it."""
    sentences = []
    start = 0
    for end in _SENTENCE_END.finditer(text):
        if text[start : end.start()].strip():
            sentences.append((text[start : end.start()], end[0]))
        start = end.end()
    if text[start:].strip():
        sentences.append((text[start:], ""))
    return sentences


def _cut(text: str, limit: int, count: Counter) -> list[tuple[str, int]]:
    """`text` cut at spaces into the fewest parts of at most `limit` tokens, a word longer than
    that between characters; each part with its count."""
    words = [match.span() for match in _WORD.finditer(text)]
    parts: list[tuple[str, int]] = []
    first = 0
    while first < len(words):

        def candidate(end: int, first: int = first) -> str:
            return text[words[first][0] : words[end - 1][1]]

        # Every word is at least a token, so a part holds at most `limit` words.
        fit = _longest_fit(
            candidate,
            shortest=first + 1,
            longest=min(len(words), first + limit),
            limit=limit,
            count=count,
        )
        if fit is None:
            parts.extend(_cut_word(text[words[first][0] : words[first][1]], limit, count))
            first += 1
        else:
            first, part, tokens = fit
            parts.append((part, tokens))
    return parts


def _cut_word(word: str, limit: int, count: Counter) -> list[tuple[str, int]]:
    parts = []
    while word:

        def candidate(end: int, word: str = word) -> str:
            return word[:end]

        fit = _longest_fit(
            candidate,
            shortest=1,
            longest=min(len(word), limit * _CHARACTERS_PER_TOKEN),
            limit=limit,
            count=count,
        )
        if fit is None:
            raise ValueError(f"count_tokens counts {word[0]!r} as more than {limit} tokens")
        end, part, tokens = fit
        parts.append((part, tokens))
        word = word[end:]
    return parts


def _longest_fit(
    candidate: Callable[[int], str], *, shortest: int, longest: int, limit: int, count: Counter
) -> tuple[int, str, int] | None:
    """The largest n in [shortest, longest] whose `candidate(n)` counts at most `limit` tokens,
    with that text and count; None when even `candidate(shortest)` is too long. A binary search:
    the candidates must grow with n."""
    best = None
    while shortest <= longest:
        middle = (shortest + longest) // 2
        text = candidate(middle)
        tokens = count(text)
        if tokens <= limit:
            best = (middle, text, tokens)
            shortest = middle + 1
        else:
            longest = middle - 1
    return best


def _pack(units: list[_Unit], limit: int, overlap: int, count: Counter) -> list[tuple[str, int]]:
    """The units of one section packed greedily into pieces, each after the first starting with
    the tail of the one before."""
    pieces: list[tuple[str, int]] = []
    first = 0
    while first < len(units):
        tail, tail_tokens = "", 0
        if pieces and overlap:
            room = min(overlap, limit - units[first].tokens)
            tail, tail_tokens = _tail(pieces[-1][0], room, count)
        end, total = first, tail_tokens
        while end < len(units) and (end == first or total + units[end].tokens <= limit):
            total += units[end].tokens
            end += 1
        text = _join(tail, units[first:end])
        tokens = count(text)
        # The sum of the parts' counts can fall short of the count of the joined text; a lone
        # unit without a tail is its own text, counted within the limit when it was made.
        while tokens > limit and (end - first > 1 or tail):
            if end - first > 1:
                end -= 1
            else:
                tail = ""
            text = _join(tail, units[first:end])
            tokens = count(text)
        pieces.append((text, tokens))
        first = end
    return pieces


def _join(tail: str, units: list[_Unit]) -> str:
    text = units[0].text if not tail else tail + units[0].joiner + units[0].text
    return text + "".join(unit.joiner + unit.text for unit in units[1:])


def _tail(text: str, limit: int, count: Counter) -> tuple[str, int]:
    """The end of `text` to repeat in the next piece: its last whole sentences within `limit`
    tokens, or if the last sentence alone is longer, its last words within it."""
    if limit <= 0:
        return "", 0
    starts = [0, *(match.end() for match in _SENTENCE_END.finditer(text))]
    fit = _longest_fit(
        lambda sentences: text[starts[-sentences] :],
        shortest=1,
        longest=len(starts),
        limit=limit,
        count=count,
    )
    if fit is None:
        last = text[starts[-1] :]
        words = [match.start() for match in _WORD.finditer(last)]
        fit = _longest_fit(
            lambda taken: last[words[-taken] :],
            shortest=1,
            longest=min(len(words), limit),
            limit=limit,
            count=count,
        )
    if fit is None:
        return "", 0
    _, tail, tokens = fit
    return tail, tokens
