"""A spoken reply whose talker runs in another speech stage (`--stages`, server/scale_out_stages.py).

    thinker (this process) ──RequestOutput: text deltas + speech_feed──┬──▶ text to the caller
                                                                       └──▶ SpeechService.speak
    caller ◀── AudioChunks as the speech stage makes them ◀────────────────────────┘
    then Finished (the thinker's usage) once the speech has ended too

Feeds go out while the reply is written, not at its end: each engine output's feed is handed
on as it arrives, so the talker starts with the first reply token, as in one process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from omnilive.engine.async_engine import RequestOutput, as_engine_outputs
from omnilive.engine.speech_export import SpeechFeed, SpeechService
from omnilive.types import EngineOutput

_THINKER_DONE, _SPEECH_DONE = object(), object()


async def spoken_elsewhere(request_id: str, stream: AsyncIterator[RequestOutput],
                           service: SpeechService) -> AsyncIterator[EngineOutput]:
    """The request's outputs with its audio from `service`; closing it aborts both halves."""
    feeds: asyncio.Queue[SpeechFeed | None] = asyncio.Queue()
    merged: asyncio.Queue = asyncio.Queue()  # EngineOutput | BaseException | a _DONE marker
    last: list[RequestOutput] = []

    async def feed_stream() -> AsyncIterator[SpeechFeed]:
        while (feed := await feeds.get()) is not None:
            yield feed

    async def think() -> None:
        try:
            async for output in stream:
                if output.speech_feed is not None:
                    feeds.put_nowait(output.speech_feed)
                for message in as_engine_outputs(replace(output, finish_reason=None, speech_feed=None)):
                    merged.put_nowait(message)
                if output.finished:
                    last.append(output)
            merged.put_nowait(_THINKER_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            merged.put_nowait(error)
        finally:
            feeds.put_nowait(None)

    async def speak() -> None:
        try:
            async for chunk in service.speak(request_id, feed_stream()):
                merged.put_nowait(chunk)
            merged.put_nowait(_SPEECH_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            merged.put_nowait(error)

    tasks = [asyncio.create_task(think()), asyncio.create_task(speak())]
    try:
        ends = 0
        while ends < 2:
            item = await merged.get()
            if item is _THINKER_DONE or item is _SPEECH_DONE:
                ends += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        if last:
            yield finished_message(last[-1])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stream.aclose()


def finished_message(output: RequestOutput) -> EngineOutput:
    """The Finished message (with usage) of the thinker's last output."""
    return as_engine_outputs(replace(output, text="", reasoning="", logprobs=(), tool_calls=(), audio=(),
                                     speech_feed=None))[-1]
