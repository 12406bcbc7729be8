import asyncio
import threading

import pytest
from test_llm_engine import GREEDY, make_engine, prompt, run_to_end, text_of, tokens_of

from omnilive.engine.async_engine import AsyncLLM
from omnilive.types import EngineError, SamplingParams

LONG = SamplingParams(temperature=0.0, max_tokens=200)


@pytest.fixture
def llm():
    llm = AsyncLLM(make_engine(max_slots=4, context_length=256))
    yield llm
    llm.shutdown()


async def collect(llm: AsyncLLM, request_id: str, prompt_ids: list[int], sampling: SamplingParams):
    return [output async for output in llm.generate(request_id, prompt_ids, sampling)]


async def wait_until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_streams_equal_the_sync_engine_and_run_off_the_event_loop(llm):
    sampling = SamplingParams(temperature=0.8, seed=3, max_tokens=16)
    prompts = {f"r{i}": prompt(f"question {i}") for i in range(4)}
    engine_threads = set()
    original_step = llm.engine.step

    def recording_step():
        engine_threads.add(threading.current_thread())
        return original_step()

    llm.engine.step = recording_step
    streams = await asyncio.gather(*(collect(llm, rid, ids, sampling) for rid, ids in prompts.items()))
    expected = run_to_end(make_engine(), {0: [(rid, ids, sampling) for rid, ids in prompts.items()]})
    for (rid, _), outputs in zip(prompts.items(), streams):
        assert tokens_of(outputs) == tokens_of(expected[rid])
        assert text_of(outputs) == text_of(expected[rid])
        assert outputs[-1].finish_reason is not None
    assert [t.name for t in engine_threads] == ["omnilive-llm-engine"] and threading.current_thread() not in engine_threads


async def close_after_two_outputs(llm: AsyncLLM) -> None:
    stream = llm.generate("gone", prompt("talk for a long time"), LONG)
    await anext(stream)
    await anext(stream)
    await stream.aclose()


async def cancel_while_waiting(llm: AsyncLLM) -> None:
    received = asyncio.Event()

    async def consume():
        async for _ in llm.generate("gone", prompt("talk for a long time"), LONG):
            received.set()

    task = asyncio.create_task(consume())
    await received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("stop_consuming", [close_after_two_outputs, cancel_while_waiting])
async def test_consumer_leaving_aborts_within_a_step(llm, stop_consuming):
    slots = llm.engine.num_free_slots
    await stop_consuming(llm)
    steps_at_leave = llm.engine.steps_run
    await wait_until(lambda: llm.engine.num_free_slots == slots)
    assert llm.engine.steps_run - steps_at_leave <= 1  # the step in flight, then the abort
    await wait_until(lambda: not llm.engine.has_work())
    assert llm.engine.scheduler.find("gone") is None


async def test_abort_from_outside_ends_the_stream(llm):
    outputs = []
    async for output in llm.generate("r", prompt("keep going"), LONG):
        outputs.append(output)
        if len(outputs) == 2:
            llm.abort("r")
    assert outputs[-1].finish_reason == "abort"
    assert len(outputs) < 20


async def test_engine_error_is_raised_on_first_iteration(llm):
    with pytest.raises(EngineError) as error:
        await collect(llm, "big", list(range(300)), GREEDY)
    assert error.value.code == "context_length_exceeded"
    # the id is usable again and the engine still serves
    outputs = await collect(llm, "big", prompt("small"), SamplingParams(temperature=0.0, max_tokens=3))
    assert outputs[-1].completion_tokens == 3


async def test_idle_thread_sleeps_and_shutdown_ends_open_streams(llm):
    await collect(llm, "warm", prompt("hi"), SamplingParams(temperature=0.0, max_tokens=2))
    steps = llm.engine.steps_run
    await asyncio.sleep(0.05)
    assert llm.engine.steps_run == steps  # no busy stepping without work

    stream = llm.generate("open", prompt("long answer"), LONG)
    await anext(stream)
    await asyncio.to_thread(llm.shutdown)
    rest = [output async for output in stream]
    assert rest[-1].finish_reason == "abort"
    assert not llm.running
    with pytest.raises(EngineError):
        await collect(llm, "late", prompt("x"), GREEDY)
