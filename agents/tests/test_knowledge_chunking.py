import random
import re

import pytest

from agents.knowledge.chunking import Piece, chunk, word_tokens
from agents.knowledge.extract import Block


def words(text: str) -> int:
    """One token a word: easy to reason about in the examples."""
    return len(text.split())


def characters(text: str) -> int:
    """Roughly what a subword tokenizer does with prose, and not additive over joins."""
    return len(text) // 4 + 1


def with_special_tokens(text: str) -> int:
    """Like a tokenizer that adds [CLS] and [SEP] to every text it counts."""
    return word_tokens(text) + 2


def numbered(count: int, start: int = 0) -> str:
    return " ".join(f"w{n}" for n in range(start, start + count))


def test_word_tokens_is_1_3_tokens_a_word_rounded_up():
    assert [word_tokens(" ".join(["w"] * n)) for n in (0, 1, 3, 10, 100)] == [0, 2, 4, 13, 130]


def test_blocks_under_one_heading_share_a_piece_and_a_new_heading_starts_one():
    blocks = [
        Block(heading="", text="Preface."),
        Block(heading="Install", text="Download it."),
        Block(heading="Install", text="  "),
        Block(heading="Install", text="Run it."),
        Block(heading="Use", text="Ask it."),
        Block(heading="Install", text="Again."),
    ]

    pieces = chunk(blocks, max_tokens=100, overlap=10, count_tokens=words)

    assert pieces == [
        Piece(text="Preface.", heading="", position=0, tokens=1),
        Piece(text="Download it.\n\nRun it.", heading="Install", position=1, tokens=4),
        Piece(text="Ask it.", heading="Use", position=2, tokens=2),
        Piece(text="Again.", heading="Install", position=3, tokens=1),
    ]


def test_blocks_are_packed_while_the_piece_stays_within_max_tokens():
    blocks = [Block(heading="H", text=numbered(6, start)) for start in (0, 6, 12)]

    pieces = chunk(blocks, max_tokens=16, overlap=0, count_tokens=words)

    assert [piece.text for piece in pieces] == [
        numbered(6) + "\n\n" + numbered(6, 6),
        numbered(6, 12),
    ]
    assert [piece.tokens for piece in pieces] == [12, 6]


def test_a_block_over_max_tokens_is_split_at_sentence_ends():
    sentences = [numbered(6, 0) + ".", numbered(6, 6) + "!", numbered(6, 12) + "?", "End."]
    block = Block(heading="H", text=" ".join(sentences))

    pieces = chunk([block], max_tokens=16, overlap=0, count_tokens=words)

    assert [piece.text for piece in pieces] == [
        f"{sentences[0]} {sentences[1]}",
        f"{sentences[2]} {sentences[3]}",
    ]


def test_line_breaks_in_a_long_block_are_split_points_too():
    block = Block(heading="", text=f"{numbered(10)}\n{numbered(10, 10)}")

    pieces = chunk([block], max_tokens=16, overlap=0, count_tokens=words)

    assert [piece.text for piece in pieces] == [numbered(10), numbered(10, 10)]


def test_a_sentence_over_max_tokens_is_split_at_words():
    pieces = chunk(
        [Block(heading="", text=numbered(40))], max_tokens=16, overlap=0, count_tokens=words
    )

    assert [piece.text for piece in pieces] == [numbered(16), numbered(16, 16), numbered(8, 32)]
    assert [piece.position for piece in pieces] == [0, 1, 2]


def test_a_word_longer_than_max_tokens_is_split_between_characters():
    pieces = chunk(
        [Block(heading="", text="x" * 200)], max_tokens=16, overlap=0, count_tokens=characters
    )

    assert "".join(piece.text for piece in pieces) == "x" * 200
    assert all(characters(piece.text) <= 16 for piece in pieces)


def test_overlap_repeats_the_last_whole_sentences_of_the_previous_piece():
    text = "Alpha beta gamma delta epsilon zeta. Eta theta iota. Kappa lambda. Mu nu xi pi rho tau."

    pieces = chunk([Block(heading="H", text=text)], max_tokens=16, overlap=5, count_tokens=words)

    assert [piece.text for piece in pieces] == [
        "Alpha beta gamma delta epsilon zeta. Eta theta iota. Kappa lambda.",
        "Eta theta iota. Kappa lambda. Mu nu xi pi rho tau.",
    ]


def test_overlap_takes_the_last_words_when_the_last_sentence_is_longer():
    pieces = chunk(
        [Block(heading="H", text=numbered(30))], max_tokens=16, overlap=4, count_tokens=words
    )

    assert [piece.text for piece in pieces] == [
        numbered(12),
        numbered(4, 8) + " " + numbered(12, 12),
        numbered(4, 20) + " " + numbered(6, 24),
    ]
    assert all(piece.tokens <= 16 for piece in pieces)


def test_overlap_zero_repeats_nothing():
    pieces = chunk(
        [Block(heading="H", text=numbered(30))], max_tokens=16, overlap=0, count_tokens=words
    )

    assert " ".join(piece.text for piece in pieces) == numbered(30)


def test_overlap_never_crosses_a_heading():
    blocks = [
        Block(
            heading="A",
            text="Alpha beta gamma delta epsilon zeta eta theta iota kappa. "
            "Lambda mu nu xi omicron pi rho sigma tau upsilon.",
        ),
        Block(heading="B", text="Phi chi."),
    ]

    pieces = chunk(blocks, max_tokens=16, overlap=4, count_tokens=words)

    assert [(piece.heading, piece.text) for piece in pieces] == [
        ("A", "Alpha beta gamma delta epsilon zeta eta theta iota kappa."),
        ("A", "eta theta iota kappa. Lambda mu nu xi omicron pi rho sigma tau upsilon."),
        ("B", "Phi chi."),
    ]


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "message"),
    [
        (15, 0, "max_tokens must be at least 16, not 15"),
        (100, -1, "overlap must be at least 0 and less than half of max_tokens (50"),
        (100, 50, "overlap must be at least 0 and less than half of max_tokens (50"),
        (17, 8, "less than half of max_tokens (8 for max_tokens=17), not 8"),
    ],
)
def test_limits_are_validated(max_tokens, overlap, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        chunk(
            [Block(heading="", text="x")],
            max_tokens=max_tokens,
            overlap=overlap,
            count_tokens=words,
        )


def test_no_blocks_make_no_pieces():
    assert chunk([], max_tokens=16, overlap=0, count_tokens=words) == []
    assert (
        chunk([Block(heading="H", text=" \n ")], max_tokens=16, overlap=0, count_tokens=words) == []
    )


def random_blocks(rng: random.Random) -> list[Block]:
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))
        for _ in range(300)
    ]
    blocks = []
    for _ in range(rng.randint(1, 30)):
        text = " ".join(
            rng.choice(vocabulary) + rng.choice(["", "", "", "", ".", ",", "!", "?", "\n"])
            for _ in range(rng.choice([1, 5, 40, 300, 1500]))
        )
        blocks.append(Block(heading=rng.choice(["", "Intro", "Setup", "Use"]), text=text))
    return blocks


@pytest.mark.parametrize("counter", [word_tokens, characters, with_special_tokens, words])
@pytest.mark.parametrize("seed", range(8))
def test_no_piece_exceeds_max_tokens_for_random_documents(seed, counter):
    rng = random.Random(seed)
    blocks = random_blocks(rng)
    max_tokens = rng.choice([16, 50, 256])
    overlap = rng.choice([0, max_tokens // 4, max_tokens // 2 - 1])

    pieces = chunk(blocks, max_tokens=max_tokens, overlap=overlap, count_tokens=counter)

    assert pieces, "every random document has text"
    assert [piece.position for piece in pieces] == list(range(len(pieces)))
    for piece in pieces:
        assert piece.text.strip()
        assert piece.tokens == counter(piece.text) <= max_tokens
    assert pieces == chunk(blocks, max_tokens=max_tokens, overlap=overlap, count_tokens=counter)


@pytest.mark.parametrize("seed", range(8))
def test_without_overlap_the_pieces_hold_every_word_once_in_order(seed):
    blocks = random_blocks(random.Random(seed))

    pieces = chunk(blocks, max_tokens=40, overlap=0, count_tokens=word_tokens)

    assert [word for piece in pieces for word in piece.text.split()] == [
        word for block in blocks for word in block.text.split()
    ]
    # Headings follow the blocks' headings, each run of one heading in its own pieces.
    headings = [block.heading for block in blocks if block.text.strip()]
    runs = [
        heading
        for index, heading in enumerate(headings)
        if headings[index - 1 : index] != [heading]
    ]
    piece_runs = [
        piece.heading
        for index, piece in enumerate(pieces)
        if index == 0 or pieces[index - 1].heading != piece.heading
    ]
    assert piece_runs == runs


def test_each_sentence_is_counted_about_once():
    calls = []

    def counting(text: str) -> int:
        calls.append(text)
        return word_tokens(text)

    sentences = [f"{numbered(10, n)}." for n in range(0, 2000, 10)]  # 200 sentences, 13 tokens each
    pieces = chunk(
        [Block(heading="", text=" ".join(sentences))],
        max_tokens=256,
        overlap=32,
        count_tokens=counting,
    )

    # One count for the block, one per sentence, and a few per piece (its tail and its check):
    # the text is counted a few times over, not once per growing prefix.
    assert len(calls) <= 1 + len(sentences) + 6 * len(pieces)
    assert sum(len(text) for text in calls) < 5 * len(" ".join(sentences))
