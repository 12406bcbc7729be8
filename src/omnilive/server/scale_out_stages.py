"""`--stages thinker=N,speech=M`: the speech stage (talker + token2wav) of a Qwen2.5-Omni model as
its own Ray Serve deployment, beside the thinker replicas that take HTTP.

    client ──▶ proxy ──▶ thinker replica (the whole app; LLMEngine(export_speech=True))
                           │ each spoken request: SpeechFeeds while the reply is written
                           │   (prompt hidden states, then every reply token's hidden state)
                           ▼ put, in order
                         FeedChannel (a small actor of that thinker replica)
                           ▲ take                                 AudioChunks, streamed back
    speech replica (SpeechReplica.speak, chosen by Serve's router) ──────────────▶ thinker replica

The thinker calls the speech deployment through its DeploymentHandle with
`options(stream=True)`: one streaming call per spoken request, which Serve routes to a speech
replica and which stays there. Feeds cannot ride the same call (a Serve call takes its
arguments once), so they go through the thinker replica's FeedChannel, whose handle the call
carries; the speech replica takes them in order while it streams audio back. Closing the
audio stream (the client left, the reply failed) cancels the call on the speech replica,
whose SpeechEngine then frees the request's talker row.

Both halves are plain engine code (engine/speech_export.py, engine/speech_engine.py); this
module only carries their messages over Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from omnilive.engine.speech_export import SpeechFeed, joined_feeds
from omnilive.server.settings import Settings
from omnilive.types import AudioChunk

log = logging.getLogger(__name__)

SPEECH_DEPLOYMENT = "omnilive-speech"


class FeedChannel:
    """The feeds of one thinker replica's spoken requests, kept by request id until a speech
    replica takes them. An asyncio Ray actor, owned by its thinker replica (it goes with it)."""

    def __init__(self):
        self.queues: dict[str, asyncio.Queue] = {}

    def _queue(self, request_id: str) -> asyncio.Queue:
        return self.queues.setdefault(request_id, asyncio.Queue())

    async def put(self, request_id: str, feed: SpeechFeed) -> None:
        self._queue(request_id).put_nowait(feed)

    async def take(self, request_id: str) -> list[SpeechFeed]:
        """Every feed waiting for the request; waits for the first."""
        queue = self._queue(request_id)
        taken = [await queue.get()]
        while not queue.empty():
            taken.append(queue.get_nowait())
        return taken

    async def close(self, request_id: str) -> None:
        self.queues.pop(request_id, None)


class SpeechReplica:
    """One replica of the speech deployment: a SpeechEngine (talker + token2wav) on its own thread."""

    def __init__(self, settings: Settings):
        from omnilive.backends.native_omni import load_speech_engine

        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("speech replica: loading the talker and token2wav of %s", settings.model)
        self.speech = load_speech_engine(settings)

    async def speak(self, request_id: str, channel: Any) -> AsyncIterator[AudioChunk]:
        """Streamed by Serve: the request's audio while its feeds come from `channel`."""

        async def feeds() -> AsyncIterator[SpeechFeed]:
            while True:
                for feed in await channel.take.remote(request_id):
                    yield feed
                    if feed.ended:
                        return

        async for chunk in self.speech.speak(request_id, feeds()):
            yield chunk


class RaySpeech:
    """The thinker replica's SpeechService (engine/speech_export.py): its spoken requests'
    speech, by the speech deployment's handle."""

    def __init__(self, handle: Any):
        import ray

        self.handle = handle.options(stream=True)
        self.channel = ray.remote(num_cpus=0)(FeedChannel).remote()

    async def speak(self, request_id: str, feeds: AsyncIterator[SpeechFeed]) -> AsyncIterator[AudioChunk]:
        arrived: asyncio.Queue[SpeechFeed | None] = asyncio.Queue()

        async def read() -> None:
            async for feed in feeds:
                arrived.put_nowait(feed)
            arrived.put_nowait(None)

        async def pump() -> None:
            """One put at a time, so the channel gets feeds in the thinker's order; feeds that
            arrive while a put is under way go as one with the next."""
            while True:
                batch = [await arrived.get()]
                while not arrived.empty():
                    batch.append(arrived.get_nowait())
                ended = batch[-1] is None
                if (feed := joined_feeds(batch[:-1] if ended else batch)) is not None:
                    await self.channel.put.remote(request_id, feed)
                if ended:
                    return

        reading = asyncio.create_task(read())
        pumping = asyncio.create_task(pump())
        audio = self.handle.speak.remote(request_id, self.channel)
        try:
            async for chunk in audio:
                yield chunk
            if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                raise pumping.exception()
        finally:
            reading.cancel()
            pumping.cancel()
            audio.cancel()
            self.channel.close.remote(request_id)


def speech_deployment(settings: Settings, **options: Any) -> Any:
    """The bound speech deployment: STAGES["speech"] replicas, each with the thinker's `options`
    (resources, queue length, health checks)."""
    from ray import serve

    return serve.deployment(name=SPEECH_DEPLOYMENT, num_replicas=settings.stages["speech"], **options)(
        SpeechReplica).bind(settings)


def staged_backend(settings: Settings, speech_handle: Any):
    """A thinker replica's backend: the checkpoint's thinker here, its speech on the handle."""
    from omnilive.backends.native_omni import NativeBackend

    return NativeBackend(settings, speech_service=RaySpeech(speech_handle))
