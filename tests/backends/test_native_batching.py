"""Continuous batching of the native Qwen2.5-Omni engine (tiny random checkpoint, float32):
requests stepped together give what each gives alone: text tokens, codec tokens, audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from omnilive.engine import speech_stage
from tests.backends.native_engine import Batch, Job
from omnilive.engine.speech import SpeechStream
from omnilive.types import (
    AudioChunk,
    AudioInput,
    EngineError,
    Finished,
    ImageInput,
    Message,
    SamplingParams,
    TextDelta,
)

pytest.importorskip("transformers")


def picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))


def tone(seconds: float) -> AudioInput:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return AudioInput((0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Ask:
    content: tuple
    sampling: SamplingParams
    voice: str | None = None

    def job(self, model, outputs: list) -> Job:
        prompt = model.processor.build((Message("user", self.content),), speak=self.voice is not None)
        voice = model.voices[self.voice] if self.voice else None
        return Job(prompt, self.sampling, voice, outputs.append)


# text only, spoken in two voices and seeds, an image, an audio clip, different lengths and settings
ASKS = {
    "text": Ask(("Tell me a long story about the sea.",), SamplingParams(temperature=0.0, max_tokens=14)),
    "spoken": Ask(("Tell me a long story about the sea.",), SamplingParams(temperature=0.0, max_tokens=30, seed=3),
                  "Chelsie"),
    "image": Ask(("What is in this picture?", ImageInput(picture())),
                 SamplingParams(temperature=0.7, top_k=20, max_tokens=9, seed=5, logprobs=True), "Ethan"),
    "audio": Ask((tone(0.6), "What did you hear?"),
                 SamplingParams(temperature=0.9, top_p=0.9, max_tokens=11, seed=9, logprobs=True, top_logprobs=2)),
    "late": Ask(("A short poem, please.",), SamplingParams(temperature=0.6, max_tokens=12, seed=7), "Ethan"),
}


@dataclasses.dataclass
class Result:
    job: Job
    outputs: list

    @property
    def text(self) -> str:
        return "".join(out.text for out in self.outputs if isinstance(out, TextDelta))

    @property
    def logprobs(self) -> list:
        return [lp for out in self.outputs if isinstance(out, TextDelta) for lp in out.logprobs]

    @property
    def audio(self) -> np.ndarray:
        chunks = [out.samples for out in self.outputs if isinstance(out, AudioChunk)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    @property
    def finished(self) -> Finished:
        assert isinstance(self.outputs[-1], Finished), self.outputs[-1:]
        return self.outputs[-1]


def fresh(model, name: str) -> Result:
    outputs: list = []
    return Result(ASKS[name].job(model, outputs), outputs)


def alone(model, runner, name: str) -> Result:
    result, batch = fresh(model, name), Batch(runner, max_batch=1)
    batch.add(result.job)
    batch.run_until_idle()
    return result


@pytest.fixture(scope="module")
def alone_results(model, runner):
    return {name: alone(model, runner, name) for name in ASKS}


def assert_same(together: Result, by_itself: Result) -> None:
    assert together.job.token_ids == by_itself.job.token_ids
    assert together.text == by_itself.text
    # other prefill chunk boundaries and batch rows move logprobs in the last float bits only
    assert [(lp.token, [t for t, _, _ in lp.top]) for lp in together.logprobs] == \
        [(lp.token, [t for t, _, _ in lp.top]) for lp in by_itself.logprobs]
    assert np.allclose([lp.logprob for lp in together.logprobs], [lp.logprob for lp in by_itself.logprobs], atol=1e-4)
    # the same finish and usage, except for how much of the prompt one of them found cached
    uncached = [dataclasses.replace(r.finished.usage, cached_prompt_tokens=0) for r in (together, by_itself)]
    assert together.finished.finish_reason == by_itself.finished.finish_reason and uncached[0] == uncached[1]
    assert together.finished.usage.cached_prompt_tokens == together.job.cached
    if by_itself.job.speech is not None:
        assert together.job.speech.codes == by_itself.job.speech.codes and by_itself.job.speech.codes
        assert together.audio.shape == by_itself.audio.shape
        assert np.abs(together.audio - by_itself.audio).max() <= 1e-4


def test_requests_stepped_together_equal_each_alone(model, runner, alone_results):
    batch = Batch(runner, max_batch=4)
    together = {name: fresh(model, name) for name in ASKS}
    for name in ("text", "spoken", "image", "audio"):
        batch.add(together[name].job)
    forwards: list[tuple[int, int]] = []  # (rows, tokens per row) of every thinker forward
    hook = model.thinker.register_forward_hook(lambda module, args, out: forwards.append(tuple(args[1].shape)))
    steps = 0
    try:
        while not all(together[name].job.token_ids for name in ("text", "spoken", "image", "audio")):
            batch.step()  # the last one joins while the others decode
            steps += 1
        batch.add(together["late"].job)
        joined = len(forwards)
        while batch.has_work():
            batch.step()
            steps += 1
    finally:
        hook.remove()
    assert len(forwards) <= steps  # at most one thinker forward per step, whatever it holds
    assert max(rows for rows, _ in forwards) == 4  # one forward decoded four requests at once
    # admitted when a row freed, the late prompt ran in the forwards of those still decoding
    assert any(rows > 1 and width > 1 for rows, width in forwards[joined:])
    for name, result in together.items():
        assert_same(result, alone_results[name])
    assert alone_results["text"].job.speech is None and not alone_results["text"].audio.size
    assert len(alone_results["audio"].logprobs) == alone_results["audio"].finished.usage.completion_tokens
    assert alone_results["image"].finished.usage.image_prompt_tokens > 0


def speak_two(model, runner, **batch_options) -> tuple[list[Result], list[int]]:
    """Two spoken requests (other voice and seed for the second) added together; the rows of
    every DiT forward."""
    dit = model.token2wav.code2wav_dit_model
    rows: list[int] = []
    hook = dit.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    batch = Batch(runner, max_batch=2, **batch_options)
    results = [fresh(model, "spoken"), Result(TWIN.job(model, outputs := []), outputs)]
    try:
        for result in results:
            batch.add(result.job)
        batch.run_until_idle()
    finally:
        hook.remove()
    return results, rows


TWIN = dataclasses.replace(ASKS["spoken"], voice="Ethan", sampling=dataclasses.replace(ASKS["spoken"].sampling, seed=4))


def twin_alone(model, runner) -> Result:
    """The TWIN request on an engine of its own."""
    result = Result(TWIN.job(model, outputs := []), outputs)
    batch = Batch(runner, max_batch=1)
    batch.add(result.job)
    batch.run_until_idle()
    return result


def test_streams_ahead_of_their_listeners_solve_their_token2wav_windows_together(model, runner, alone_results):
    """Speech faster than real time (a clock that stands still): windows after the first wait
    for the other stream's, one solve takes both (each its own voice, noise and offsets), and
    each stream speaks exactly as it would alone."""
    results, rows = speak_two(model, runner, speech_lead_s=0.0, clock=lambda: 0.0, windows_per_step=None)
    assert max(rows) == 4  # 2 streams x (conditional + null guidance rows)
    assert_same(results[0], alone_results["spoken"])
    assert_same(results[1], twin_alone(model, runner))
    assert not np.allclose(results[0].audio[:1000], results[1].audio[:1000])  # two voices, two noises


def test_streams_behind_their_listeners_solve_each_window_at_once(model, runner, alone_results):
    """Slower than real time (a clock that runs ahead), every window is urgent: solved the step
    its codes exist, never held back for a batch (the GPU rule)."""
    ticks = iter(range(0, 10**9, 1000))
    results, rows = speak_two(model, runner, clock=lambda: float(next(ticks)), windows_per_step=None)
    # the second prompt is prefilled a step after the first, so no window of it falls due in
    # the same step as one of the first's: one stream's window per solve (guidance pair)
    assert 2 * len(results[0].job.prompt) > runner.prefill_chunk_tokens
    assert max(rows) == 2
    assert_same(results[0], alone_results["spoken"])


def test_a_stream_not_heard_yet_gets_its_first_window_before_waiting_windows_of_others(
        model, runner, alone_results, monkeypatch):
    """Two streams speak ahead of their listeners (their later windows wait); a third arrives:
    its first window is urgent, and the waiting windows are solved with it, after it."""
    completed: list[tuple[int, str]] = []  # (step, request) of every token2wav window, in order
    step, names = 0, {}
    complete = SpeechStream.complete

    def logged_complete(speech, window, mel):
        completed.append((step, names[id(speech)]))
        return complete(speech, window, mel)

    monkeypatch.setattr(SpeechStream, "complete", logged_complete)
    # room for many waiting windows: the tiny DiT's windows are a few codes each
    batch = Batch(runner, max_batch=32, speech_lead_s=0.0, clock=lambda: 0.0, windows_per_step=None)
    long = {"sampling": dataclasses.replace(ASKS["spoken"].sampling, max_tokens=120)}  # they outlast its start
    first = Result(dataclasses.replace(ASKS["spoken"], **long).job(model, outputs := []), outputs)
    twin = Result(dataclasses.replace(TWIN, **long).job(model, outputs := []), outputs)
    late = fresh(model, "late")

    def run_until(done) -> None:
        nonlocal step
        while not done():
            batch.step()
            step += 1
            names.update({id(r.job.speech): name for name, r in (("first", first), ("twin", twin), ("late", late))
                          if r.job.speech is not None})

    for result in (first, twin):
        batch.add(result.job)
    run_until(lambda: all(r.job.speech is not None and r.job.speech.first_audio_at is not None
                          and r.job.speech.windows for r in (first, twin)))
    batch.add(late.job)
    run_until(lambda: not batch.has_work())
    late_step = next(s for s, name in completed if name == "late")
    in_that_step = [name for s, name in completed if s == late_step]
    assert in_that_step[0] == "late" and {"first", "twin"} <= set(in_that_step)
    assert_same(late, alone_results["late"])
    assert first.finished.finish_reason == twin.finished.finish_reason == "length" and len(first.audio)


def test_on_a_cpu_each_step_solves_one_token2wav_window(model, runner, alone_results, monkeypatch):
    """A compute-bound DiT (CPU, the default there): one window per step, not all waiting ones
    in one long solve, and each stream still speaks exactly as it does alone."""
    assert Batch(runner).windows_per_step == 1  # "auto" on a CPU
    solves: list[list[str]] = []  # the streams of every solve, in order
    solve = speech_stage.solve_windows

    def logged_solve(windows):
        names = {id(result.job.speech._wav): name for name, result in zip(("first", "twin"), results)}
        solves.append([names[id(window.stream)] for window in windows])
        return solve(windows)

    monkeypatch.setattr(speech_stage, "solve_windows", logged_solve)
    now = [0.0]
    batch = Batch(runner, max_batch=2, speech_lead_s=1000.0, clock=lambda: now[0])  # always urgent
    results = [fresh(model, "spoken"), Result(TWIN.job(model, outputs := []), outputs)]
    for result in results:
        batch.add(result.job)
    heard: list[str] = []
    while batch.has_work():
        batch.step()
        now[0] += 0.01
        for name, result in zip(("first", "twin"), results):
            if result.job.speech.first_audio_at is not None and name not in heard:
                heard.append(name)
    assert solves and all(len(streams) == 1 for streams in solves)
    assert heard == ["first", "twin"]
    monkeypatch.undo()
    assert_same(results[0], alone_results["spoken"])
    assert_same(results[1], twin_alone(model, runner))


def test_abort_frees_the_slots_at_the_next_step_and_the_others_go_on(model, runner, alone_results):
    batch = Batch(runner, max_batch=3)
    results = {name: fresh(model, name) for name in ("text", "spoken", "late")}
    for result in results.values():
        batch.add(result.job)
    victim = results["spoken"]
    while not any(isinstance(out, AudioChunk) for out in victim.outputs):  # it is speaking
        batch.step()
    emitted = len(victim.outputs)
    assert victim.job.slot is not None and victim.job.talker_slot is not None  # still writing its reply
    batch.abort(victim.job)
    batch.step()
    assert victim.job.slot is None and victim.job.talker_slot is None and victim.job not in batch.running
    assert batch.cache.num_free_rows == 3 - sum(job.slot is not None for job in batch.running)
    assert batch.talker_cache.num_free == 3 - sum(job.talker_slot is not None for job in batch.running)
    assert victim.outputs[emitted:] == [victim.finished] and victim.finished.finish_reason == "abort"
    batch.run_until_idle()
    assert victim.outputs[-1] is victim.finished  # nothing after its end
    assert_same(results["text"], alone_results["text"])
    assert_same(results["late"], alone_results["late"])


def test_more_requests_than_slots_queue_and_all_finish(model, runner, alone_results):
    batch = Batch(runner, max_batch=2)
    names = ["text", "spoken", "audio", "late", "image"]
    results = {name: fresh(model, name) for name in names}
    for result in results.values():
        batch.add(result.job)
    most_running = 0
    while batch.has_work():
        batch.step()
        most_running = max(most_running, len(batch.running))
        assert len([job for job in batch.running if job.slot is not None]) <= 2
    assert most_running == 2 and not batch.waiting
    for name in names:
        assert_same(results[name], alone_results[name])


def test_a_request_with_bad_media_fails_alone(model, runner, alone_results):
    batch = Batch(runner, max_batch=3)
    good = {name: fresh(model, name) for name in ("text", "spoken")}
    bad_outputs: list = []
    bad = ASKS["image"].job(model, bad_outputs)
    audio_media = fresh(model, "audio").job.prompt.media
    bad.prompt = dataclasses.replace(bad.prompt, media=audio_media)  # its image placeholders get an audio clip
    for job in (good["text"].job, bad, good["spoken"].job):
        batch.add(job)
    batch.run_until_idle()
    assert len(bad_outputs) == 1 and isinstance(bad_outputs[0], EngineError)
    assert bad.slot is None and bad.talker_slot is None
    for name, result in good.items():
        assert_same(result, alone_results[name])
    assert batch.cache.num_free_rows == 3 and batch.talker_cache.num_free == 3


def test_a_request_whose_speech_fails_ends_alone_with_the_error(model, runner, alone_results):
    """A failure inside one request's work on the engine thread (here its talker input) ends
    that request with an EngineError and frees its rows; the others go on as if alone."""
    batch = Batch(runner, max_batch=3)
    results = {name: fresh(model, name) for name in ("text", "spoken", "late")}
    for result in results.values():
        batch.add(result.job)
    victim = results["late"].job
    while victim.speech is None:
        batch.step()

    def broken(hidden, embed):
        raise RuntimeError("talker input broke")

    victim.speech.add_reply_token = broken
    batch.run_until_idle()
    outputs = results["late"].outputs
    assert isinstance(outputs[-1], EngineError) and "talker input broke" in outputs[-1].message
    assert not any(isinstance(out, (Finished, AudioChunk)) for out in outputs)
    assert victim.slot is None and victim.talker_slot is None and victim.request.failed
    for name in ("text", "spoken"):
        assert_same(results[name], alone_results[name])
    assert batch.cache.num_free_rows == 3 and batch.talker_cache.num_free == 3


def test_a_spoken_request_waiting_for_a_talker_slot_does_not_hold_up_text(model, runner, alone_results):
    batch = Batch(runner, max_batch=1)
    results = {name: fresh(model, name) for name in ("spoken", "late", "text")}
    batch.add(results["spoken"].job)
    speaker = results["spoken"].job
    while batch.has_work() and not (speaker.finish_reason is not None and not speaker.done):
        batch.step()
    assert speaker.slot is None and speaker.talker_slot is not None  # reply written, still speaking
    batch.add(results["late"].job)  # spoken: needs the talker slot
    batch.add(results["text"].job)  # text only: the free thinker slot is enough
    batch.step()
    assert results["text"].job in batch.running and results["late"].job in batch.waiting
    batch.run_until_idle()
    for name in results:
        assert_same(results[name], alone_results[name])
