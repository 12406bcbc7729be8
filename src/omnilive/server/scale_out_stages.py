"""`--stages thinker=N,speech=M`: the speech stage of an Omni model (Qwen2.5-Omni: talker +
token2wav; Qwen3-Omni: talker + code predictor + Code2Wav) as its own Ray Serve deployment,
beside the thinker replicas that take HTTP.

    client ──▶ proxy ──▶ thinker replica (the whole app; LLMEngine(export_speech=True))
                           │ each spoken request: SpeechFeeds while the reply is written
                           │   (the prompt's hidden states, then every reply token's embedding
                           │    and, for Qwen2.5-Omni, its hidden state)
                           ▼ put (numbered, not awaited)
                         FeedChannel (a small actor of that thinker replica)
                           ▼ one streaming call, feeds in order   AudioChunks, streamed back
    speech replica (SpeechReplica.speak, chosen by Serve's router) ──────────────▶ thinker replica

The thinker calls the speech deployment through its DeploymentHandle with
`options(stream=True)`: one streaming call per spoken request, which Serve routes to a speech
replica and which stays there. Feeds cannot ride the same call (a Serve call takes its
arguments once), so they go through the thinker replica's FeedChannel, whose handle the call
carries; the speech replica streams them from it, in order, while it streams audio back. Closing the
audio stream (the client left, the reply failed) cancels the call on the speech replica,
whose SpeechEngine then frees the request's talker row. A speech replica that dies mid-reply
fails that reply with a 503 in OpenAI's shape (an error event in a stream) and its thinker
request is aborted; the thinker replica serves on, and Ray Serve starts a new speech replica.

Both halves are plain engine code (engine/speech_export.py, engine/speech_engine.py); this
module only carries their messages over Ray.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from omnilive.engine.speech_export import SpeechFeed, joined_feeds
from omnilive.server.errors import APIError
from omnilive.server.settings import Settings
from omnilive.types import AudioChunk, EngineError

log = logging.getLogger(__name__)

SPEECH_DEPLOYMENT = "omnilive-speech"
CLOSED_KEPT = 4096  # request ids a FeedChannel remembers as closed
SPEECH_LOST = "The speech stage stopped in the middle of this reply (its replica went away); try again."


class FeedChannel:
    """The feeds of one thinker replica's spoken requests on their way to speech replicas. An
    asyncio Ray actor, owned by its thinker replica (it goes with it).

    The thinker does not wait for each put, so puts carry their place (`seq`) and wait here
    until those before them are in; `stream` hands them on as one streaming call, so no feed
    waits for the speech replica to ask for it."""

    def __init__(self):
        self.queues: dict[str, asyncio.Queue] = {}  # SpeechFeed, or None: closed
        self.early: dict[str, dict[int, SpeechFeed]] = {}
        self.next_seq: dict[str, int] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()  # recent ones: a put or stream coming late is dropped

    def _queue(self, request_id: str) -> asyncio.Queue:
        return self.queues.setdefault(request_id, asyncio.Queue())

    async def put(self, request_id: str, seq: int, feed: SpeechFeed) -> None:
        if request_id in self.closed:
            return
        early = self.early.setdefault(request_id, {})
        early[seq] = feed
        queue, turn = self._queue(request_id), self.next_seq.get(request_id, 0)
        while turn in early:
            queue.put_nowait(early.pop(turn))
            turn += 1
        self.next_seq[request_id] = turn

    async def stream(self, request_id: str) -> AsyncIterator[SpeechFeed]:
        """The request's feeds in order, those waiting together as one, up to its end (or close)."""
        if request_id in self.closed:
            return
        queue = self._queue(request_id)
        while True:
            waiting = [await queue.get()]
            while not queue.empty():
                waiting.append(queue.get_nowait())
            if None in waiting:
                return
            feed = joined_feeds(waiting)
            yield feed
            if feed.ended:
                return

    async def close(self, request_id: str) -> None:
        self.closed[request_id] = None
        while len(self.closed) > CLOSED_KEPT:
            self.closed.popitem(last=False)
        self.early.pop(request_id, None)
        self.next_seq.pop(request_id, None)
        if (queue := self.queues.pop(request_id, None)) is not None:
            queue.put_nowait(None)  # ends its stream, if one still waits


class SpeechReplica:
    """One replica of the speech deployment: a SpeechEngine (the model's talker and vocoder) on its own thread."""

    def __init__(self, settings: Settings):
        from omnilive.backends.native_omni import load_speech_engine

        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("speech replica: loading the talker and token2wav of %s", settings.model)
        self.speech = load_speech_engine(settings)

    async def speak(self, request_id: str, channel: Any) -> AsyncIterator[AudioChunk]:
        """Streamed by Serve: the request's audio while its feeds come from `channel`."""

        device = self.speech.engine.stage.thinker_embed.weight.device

        async def feeds() -> AsyncIterator[SpeechFeed]:
            async for ref in channel.stream.options(num_returns="streaming").remote(request_id):
                yield (await ref).to(device)

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
        from ray.exceptions import ActorUnavailableError, RayActorError

        async def pump() -> None:
            for seq in itertools.count():  # not waiting for each put: the channel puts them in order
                try:
                    feed = await anext(feeds)
                except StopAsyncIteration:
                    return
                self.channel.put.remote(request_id, seq, feed.to("cpu"))  # not a GPU tensor across processes

        pumping = asyncio.create_task(pump())
        audio = self.handle.speak.remote(request_id, self.channel)
        try:
            async for chunk in audio:
                yield chunk
            if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                raise pumping.exception()
        except EngineError:  # the speech engine's own (Ray's RayTaskError is one too): as in one process
            raise
        except (RayActorError, ActorUnavailableError) as error:  # the speech replica died, or is unreachable
            log.warning("speech of %s: the speech replica went away: %s", request_id, error)
            raise APIError(503, SPEECH_LOST, None, "speech_stage_unavailable") from error
        finally:
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
