"""Many clients at once against the real server and the real embedded engine.

The engine batches decodes of up to `max_batch` requests and queues the rest; these tests
check what a client must never notice: a greedy reply generated in a batch beside strangers
is the reply it gets alone, speech and text-only streams interleave without mixing, and a
client that leaves mid-stream frees its slot without disturbing anyone. Solo replies are
asked *after* the concurrent ones (prefix reuse skips prompt tokens, never generated ones).

"The reply it gets alone" has one caveat, measured: the default server computes in bfloat16,
whose logits are rounded to 1/16 (1/8 above 16), and a batch of another shape rounds
differently, so two top tokens that are (near-)tied can swap. Batched and solo replies must
therefore be equal token for token up to their first difference, and that difference must be
such a tie: it shows a rounding, while a mixed-up slot or mask shows confident tokens changing.
A float32 server (`exact_server`) has no such ties: there the replies must be equal outright.
"""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from omnilive.backends.embedded import MODEL_ID
from omnilive.engine.speech_chunker import speakable_text
from tests.metrics import metric, wait_until_idle
from tests.server_process import ServerProcess

SPEECH_RATE = 24_000  # streamed audio: base64 PCM16, 24 kHz mono
MAX_TOKENS = 24
NEAR_TIE = 0.13  # logprob gap of a bfloat16 tie: 1/16 per step below logit 16, 1/8 up to 32

QUESTIONS = (  # short questions with answers of a sentence or two, so batches stay full for a while
    "Why is the sky blue?",
    "How do bees make honey?",
    "What is the capital of France, and why is it famous?",
    "Describe the planet Mars.",
    "Why do we have seven days in a week?",
    "Why is grass green?",
    "How do birds fly?",
    "Why is ice slippery?",
    "How many legs does a spider have?",
    "What does a violin sound like?",
    "How is snow formed?",
    "Describe the Pacific Ocean.",
    "Where is Spanish spoken?",
    "What are the primary colours?",
    "Why does water boil?",
    "How does a rainbow form?",
)


@dataclass(frozen=True)
class ChosenToken:
    token: str
    top: tuple[tuple[str, float], ...]  # the two likeliest (token, logprob), likeliest first

    @property
    def gap(self) -> float:
        return self.top[0][1] - self.top[1][1]


@dataclass
class Reply:
    text: str = ""
    finish_reason: str | None = None
    usage: object | None = None
    tokens: list[ChosenToken] = field(default_factory=list)  # one per content token
    pcm: bytes = b""
    transcripts: list[str] = field(default_factory=list)
    first_token_at: float = float("inf")  # perf_counter of the first content, and of the end
    done_at: float = float("inf")


def stream_reply(client, question: str, speak: bool = False, max_tokens: int = MAX_TOKENS,
                 stop_after_chunks: int | None = None) -> Reply:
    """One streaming greedy request, read to its end (or closed after `stop_after_chunks`)."""
    extra = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}} if speak else {}
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": question}], temperature=0, seed=11,
        max_tokens=max_tokens, logprobs=True, top_logprobs=2, stream=True, stream_options={"include_usage": True},
        **extra,
    )
    reply = Reply()
    with stream:
        for received, chunk in enumerate(stream, start=1):
            if chunk.usage is not None:
                reply.usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content and reply.first_token_at == float("inf"):
                    reply.first_token_at = time.perf_counter()
                reply.text += choice.delta.content or ""
                reply.finish_reason = choice.finish_reason or reply.finish_reason
                for lp in choice.logprobs.content if choice.logprobs else ():
                    reply.tokens.append(ChosenToken(lp.token, tuple((t.token, t.logprob) for t in lp.top_logprobs)))
                if choice.delta.audio:
                    reply.pcm += base64.b64decode(choice.delta.audio.data)
                    reply.transcripts.append(choice.delta.audio.transcript)
            if stop_after_chunks is not None and received >= stop_after_chunks:
                break
    reply.done_at = time.perf_counter()
    return reply


def all_at_once(jobs) -> list:
    """Run the zero-argument callables together, released by one barrier; results in order."""
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def most_streaming_at_once(replies: list[Reply]) -> int:
    """The most replies that were between their first token and their end at the same moment."""
    events = sorted([(r.first_token_at, 1) for r in replies] + [(r.done_at, -1) for r in replies])
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most


_solo_replies: dict[tuple[str, str], Reply] = {}


def solo(client, question: str) -> Reply:
    """The question's reply with nothing else running (asked once per server)."""
    key = (str(client.base_url), question)
    if key not in _solo_replies:
        _solo_replies[key] = stream_reply(client, question)
    return _solo_replies[key]


def assert_complete(reply: Reply, question: str) -> None:
    assert reply.finish_reason in ("stop", "length"), question
    assert reply.text.strip(), question
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5, question
    assert 1 <= usage.completion_tokens <= MAX_TOKENS, question
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (usage.completion_tokens == MAX_TOKENS) == (reply.finish_reason == "length"), question
    assert "".join(t.token for t in reply.tokens) == reply.text, question


def assert_same_up_to_a_tie(batched: Reply, alone: Reply, question: str) -> None:
    """Equal token for token, or equal up to a first difference where both faced a near-tie."""
    ours, theirs = [t.token for t in batched.tokens], [t.token for t in alone.tokens]
    if ours == theirs:
        assert batched.text == alone.text and batched.finish_reason == alone.finish_reason, question
        return
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    context = f"{question!r} differs at token {k}: batched {batched.text!r}, alone {alone.text!r}"
    for reply, other in ((batched, alone), (alone, batched)):
        if k < len(reply.tokens):  # (a reply that ended at k chose its stop token there)
            assert reply.tokens[k].gap <= NEAR_TIE, f"a confident token changed; {context}: {reply.tokens[k]}"
            if k < len(other.tokens):
                assert other.tokens[k].token in dict(reply.tokens[k].top), context


@pytest.mark.slow
def test_sixteen_concurrent_streams_equal_their_solo_replies(client, http):
    together = all_at_once([lambda q=q: stream_reply(client, q) for q in QUESTIONS])
    assert wait_until_idle(http) == 0

    for question, reply in zip(QUESTIONS, together):
        assert_complete(reply, question)
    assert most_streaming_at_once(together) >= 2  # they really were generated side by side
    assert len({r.text for r in together}) == len(QUESTIONS)  # no stream got another's tokens
    for question, batched in zip(QUESTIONS, together):
        assert_same_up_to_a_tie(batched, solo(client, question), question)


@pytest.mark.slow
def test_speech_and_text_streams_mixed(client, http):
    spoken, typed = QUESTIONS[:3], QUESTIONS[3:6]
    jobs = [lambda q=q: stream_reply(client, q, speak=True) for q in spoken]
    jobs += [lambda q=q: stream_reply(client, q) for q in typed]
    replies = all_at_once(jobs)
    assert wait_until_idle(http) == 0

    for question, reply in zip(spoken, replies[:3]):
        assert_complete(reply, question)
        assert reply.pcm and len(reply.pcm) % 2 == 0, question
        samples = np.frombuffer(reply.pcm, dtype="<i2").astype(np.float32) / 32768
        duration_s = len(samples) / SPEECH_RATE
        words = len(speakable_text(reply.text).split())
        # English speech runs 2-4 words a second; wide margins for pauses and voices
        assert 0.12 * words <= duration_s <= 1.5 * words + 1.0, (question, words, duration_s)
        assert np.sqrt(np.mean(samples**2)) > 0.01, question  # speech, not silence
        assert len(reply.transcripts) >= 1 and all(t.strip() for t in reply.transcripts), question
        assert "".join(reply.transcripts) == speakable_text(reply.text), question
    for question, reply in zip(typed, replies[3:]):
        assert_complete(reply, question)
        assert not reply.pcm and not reply.transcripts, question
        assert_same_up_to_a_tie(reply, solo(client, question), question)


@pytest.mark.slow
def test_client_leaving_mid_stream_does_not_disturb_the_others(client, http):
    staying = QUESTIONS[6:10]
    aborted_before = metric(http, 'omnilive_requests_finished_total{reason="aborted"}')
    def leaver():
        return stream_reply(client, "Write a very long story about the sea.", max_tokens=400, stop_after_chunks=5)

    left, *replies = all_at_once([leaver] + [lambda q=q: stream_reply(client, q) for q in staying])

    assert left.finish_reason is None and left.text  # it really left mid-answer
    assert wait_until_idle(http) == 0
    assert metric(http, 'omnilive_requests_finished_total{reason="aborted"}') == aborted_before + 1
    for question, reply in zip(staying, replies):
        assert_complete(reply, question)
        assert_same_up_to_a_tie(reply, solo(client, question), question)


@pytest.fixture(scope="module")
def exact_client(tmp_path_factory):
    """A float32 server: no bfloat16 ties, so batched replies must equal solo ones outright."""
    from openai import OpenAI

    data_dir = tmp_path_factory.mktemp("omnilive-float32")
    with (
        ServerProcess(data_dir, env={"OMNILIVE_DTYPE": "float32"}) as running,
        OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=300) as float32_client,
    ):
        yield float32_client


@pytest.mark.slow
def test_concurrent_streams_equal_solo_replies_exactly_in_float32(exact_client):
    questions = QUESTIONS[:4]  # = max_batch: all four decode in one batch
    together = all_at_once([lambda q=q: stream_reply(exact_client, q, max_tokens=16) for q in questions])
    assert most_streaming_at_once(together) >= 2
    for question, batched in zip(questions, together):
        alone = stream_reply(exact_client, question, max_tokens=16)
        assert [t.token for t in batched.tokens] == [t.token for t in alone.tokens], question
        assert batched.text == alone.text and batched.finish_reason == alone.finish_reason, question
