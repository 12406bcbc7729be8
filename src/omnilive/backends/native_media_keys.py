"""The media items of a native prompt: keys for its KV blocks, and a cache of encoder outputs.

Two prompts whose placeholder tokens are equal may still show different images: a block's
key must also cover the media behind the placeholders it holds. `media_items` splits a
prompt's media into items, each with its placeholder token and count, a content hash of its
encoder input and the input itself; `media_spans` gives each item's placeholder range with its
hash, for engine.block_manager. `MediaEncoderCache` keeps encoder outputs by that hash, so an
image (or audio, or video) sent again (every later turn of a chat carries the earlier turns'
media) is not encoded again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from omnilive.engine.block_manager import MediaSpan
from omnilive.engine.request import PreparedPrompt
from omnilive.types import EngineError
from omnilive.media.qwen_preprocess import VisionPatches
from omnilive.model.rope_index import MRopeLayout
from omnilive.model.thinker import ThinkerMedia, audio_placeholder_count


@dataclass(frozen=True)
class MediaItem:
    token: int  # its placeholder token id
    count: int  # placeholders it takes (= encoder output rows)
    digest: str  # hash of its encoder input (pixels and grid, or mel frames)
    media: ThinkerMedia  # its encoder input alone


def media_items(media: ThinkerMedia, layout: MRopeLayout,
                audio_count: Callable[[int], int] = audio_placeholder_count) -> list[MediaItem]:
    """Every image, video and audio of the prompt: images in order, then videos, then audios
    (each kind takes that kind's placeholders in prompt order). audio_count: placeholders of an
    audio of n mel frames (Qwen2.5-Omni's by default; a thinker may name its own)."""
    items: list[MediaItem] = []
    merge = layout.spatial_merge_size
    for token, patches, kind in ((layout.image_token_id, media.images, "image"),
                                 (layout.video_token_id, media.videos, "video")):
        if patches is None:
            continue
        row = 0
        for index, grid in enumerate(patches.grid_thw.tolist()):
            rows = grid[0] * grid[1] * grid[2]
            alone = VisionPatches(patches.pixel_values[row : row + rows], patches.grid_thw[index : index + 1])
            if kind == "video":
                seconds = media.video_seconds_per_grid[index]
                item = ThinkerMedia(videos=alone, video_seconds_per_grid=(seconds,))
            else:
                seconds, item = 0.0, ThinkerMedia(images=alone)
            content = b"".join([kind.encode(), repr((grid, seconds)).encode(), _bytes(alone.pixel_values)])
            items.append(MediaItem(token, rows // merge**2, _digest(content), item))
            row += rows
    if media.audio_mel is not None:
        frame = 0
        for frames in media.audio_frames.tolist():
            mel = media.audio_mel[:, frame : frame + frames]
            item = ThinkerMedia(audio_mel=mel, audio_frames=torch.tensor([frames]))
            items.append(MediaItem(layout.audio_token_id, audio_count(frames),
                                   _digest(b"audio" + _bytes(mel)), item))
            frame += frames
    return items


def media_spans(input_ids: list[int], items: list[MediaItem]) -> tuple[MediaSpan, ...]:
    """The placeholder range of each item with its hash, so two items with equal placeholder
    tokens share blocks only when equal (a video's audio interleaves with its frames: their
    ranges overlap, which only makes both hashes cover those blocks)."""
    spans, taken = [], {}  # taken: placeholders of each kind given to earlier items
    for item in items:
        where = [i for i, t in enumerate(input_ids) if t == item.token]
        first = taken.get(item.token, 0)
        mine = where[first : first + item.count]
        taken[item.token] = first + item.count
        if len(mine) != item.count:
            raise EngineError(f"the prompt has {len(where)} placeholders {item.token}, fewer than its media need")
        spans.append(MediaSpan(mine[0], mine[-1] + 1, item.digest))
    return tuple(spans)


class MediaEncoderCache:
    """Encoder outputs [count, H] by item digest, least recently used dropped beyond `max_bytes`
    (0: no cache). Thread-safe: prompts are prepared on a worker, sometimes on the step loop."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def features(self, items: list[MediaItem],
                 encode: Callable[[ThinkerMedia], dict[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
        """The prompt's encoder outputs by placeholder token (as `encode_media` gives them):
        cached items' rows, the others encoded one item at a time and kept."""
        rows: dict[int, list[torch.Tensor]] = {}
        for item in items:
            with self._lock:
                found = self._rows.get(item.digest)
                if found is not None:
                    self._rows.move_to_end(item.digest)
                    self.hits += 1
            if found is None:
                found = encode(item.media)[item.token]
                self._keep(item.digest, found)
            rows.setdefault(item.token, []).append(found)
        return {token: torch.cat(parts) for token, parts in rows.items()}

    def _keep(self, digest: str, rows: torch.Tensor) -> None:
        size = rows.numel() * rows.element_size()
        with self._lock:
            self.misses += 1
            if size > self.max_bytes or digest in self._rows:
                return
            self._rows[digest] = rows
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._rows.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()


def _digest(content: bytes) -> str:
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def prepare_prompt(thinker, prompt, cache: MediaEncoderCache) -> PreparedPrompt:
    """An OmniPrompt ready for the engine: its media encoded (or found in `cache`: the earlier
    turns of a chat) and merged into its embeddings, its M-RoPE ids, the media spans of its
    block keys. Runs the vision and audio towers: call it off the engine thread."""
    items = media_items(prompt.media, mrope_layout_of(thinker),
                        getattr(thinker, "audio_placeholder_count", audio_placeholder_count))
    features = cache.features(items, thinker.encode_media)
    prepared = thinker.prepare_prompt(prompt.input_ids, prompt.media, features=features)
    return PreparedPrompt(prepared, media_spans(prompt.input_ids, items), prompt.audio_tokens, prompt.image_tokens)


def mrope_layout_of(thinker) -> MRopeLayout:
    """The placeholder ids of an Omni thinker or a Qwen2.5-VL model."""
    config = getattr(thinker, "thinker_config", None) or thinker.vl_config
    return config.mrope_layout


__all__ = ["MediaEncoderCache", "MediaItem", "media_items", "media_spans", "mrope_layout_of", "prepare_prompt"]
