"""Streaming text -> speakable chunks: boundaries, markdown, and stream == whole."""

import random

import pytest

from omnilive.engine.speech_chunker import SpeechChunker, speakable_text

REPLIES = [
    "Sure! Here is a **short** answer: the capital of France is Paris. It has about 2.1 million people, "
    "e.g. Dr. Smith lives there... Really? Yes.",
    "# Title\n\nSome intro text, with a clause, and more words here.\n\n- first item is *good*\n"
    "- second item with [a link](http://x.com/a_(b)) and ![a picture](u.png)\n1. numbered one\n2) numbered two\n\n"
    "```python\nprint('hi')\n```\nAfter the code, snake_case stays readable.\n> quoted line\n---\nThe end.",
    "你好，世界。今天天气很好！我们去公园吧？好的",
    "Well... I think so. The U.S. Army is big. Mr. Brown said hi. Pi is 3.14, and 1,000 is at 3:30 pm.",
    "   \n\nLeading space. Trailing space.   \n\n",
]


def chunk_all(text: str, piece_sizes=None, **options) -> list[str]:
    chunker = SpeechChunker(**options)
    chunks, i = [], 0
    while i < len(text):
        n = piece_sizes() if piece_sizes else len(text)
        chunks += chunker.feed(text[i:i + n])
        i += n
    return chunks + chunker.flush()


@pytest.mark.parametrize("reply", REPLIES)
def test_stream_in_any_pieces_equals_whole(reply):
    whole = chunk_all(reply)
    assert "".join(whole) == speakable_text(reply)
    rng = random.Random(0)
    for _ in range(50):
        assert chunk_all(reply, lambda: rng.randint(1, 7)) == whole
    assert chunk_all(reply, lambda: 1) == whole


def test_first_chunk_ends_at_a_clause_then_sentences():
    chunks = chunk_all("The capital of France, as you may know, is Paris, a large city. It is old, and it is big.")
    assert chunks == ["The capital of France, ", "as you may know, is Paris, a large city. ", "It is old, and it is big."]


def test_first_chunk_waits_for_enough_words_before_a_clause():
    assert chunk_all("Yes, it is, of course, the city of Paris.")[0] == "Yes, it is, of course, "


def test_first_chunk_is_released_as_soon_as_it_is_certain():
    chunker = SpeechChunker()
    assert chunker.feed("Paris is the capital") == []
    assert chunker.feed(". It") == ["Paris is the capital. "]  # the upper-case "I" confirms the end
    assert chunker.feed(" has a tower") == []
    assert chunker.flush() == ["It has a tower"]


def test_no_cut_inside_abbreviations_decimals_and_ellipses():
    text = "Dr. Smith, e.g. Mr. Jones, measured 3.14 metres... and J. K. Rowling agreed. Then U.S. Army left."
    assert chunk_all(text, min_first_words=100) == [
        "Dr. Smith, e.g. Mr. Jones, measured 3.14 metres... and J. K. Rowling agreed. ",
        "Then U.S. Army left.",
    ]


def test_sentence_ends_include_newlines_and_cjk_marks():
    assert chunk_all("One line\nAnother line") == ["One line\n", "Another line"]
    assert chunk_all("你好。再见！") == ["你好。", "再见！"]


def test_markdown_is_not_spoken():
    reply = (
        "## Heading\n* **Bold** and _italic_ and `code`\n"
        "```bash\nrm -rf /\n```\n"
        "See [the docs](https://example.com/a_(b)) or ![diagram](x.png).\n"
        "3. Third point\n> A quote\n***\nsnake_case"
    )
    assert speakable_text(reply) == (
        "Heading\nBold and italic and code\nSee the docs or diagram.\nThird point\nA quote\nsnake case"
    )


def test_long_text_without_sentence_ends_is_cut_at_max_chars():
    text = " ".join(["word"] * 200)
    chunks = chunk_all(text, max_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(chunks) == text


def test_chunks_without_words_join_the_next_one():
    assert chunk_all("...\n\n--\nHello there. Bye.") == ["...\n\n--\nHello there. ", "Bye."]


def test_first_chunk_may_end_before_a_word_that_opens_a_phrase():
    assert chunk_all("The capital of France is Paris. It is old, in fact.") == [
        "The capital of France ", "is Paris. ", "It is old, in fact."]
    assert chunk_all("There are 7 days in a week.") == ["There are 7 days ", "in a week."]
    assert chunk_all("There are 7 days in a week.", phrase_breaks=False) == ["There are 7 days in a week."]
    # not before four words, and not right after a word that needs the next one
    assert chunk_all("The sky is blue and clear.") == ["The sky is blue ", "and clear."]
    assert chunk_all("Bees make honey which is food.") == ["Bees make honey which is food."]
    assert chunk_all("We live on the Earth.") == ["We live on the Earth."]


def test_a_phrase_break_is_released_once_the_next_word_is_complete():
    chunker = SpeechChunker()
    assert chunker.feed("The capital of France") == []
    assert chunker.feed(" is") == []  # could still become "island"
    assert chunker.feed(" Paris") == ["The capital of France "]
    assert chunker.flush() == ["is Paris"]
