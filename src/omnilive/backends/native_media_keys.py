"""Media-aware keys for the native engine's KV blocks.

Two prompts whose placeholder tokens are equal may still show different images: a block's
key must also cover the media behind the placeholders it holds. `media_spans` gives each
item's placeholder range with a content hash of its encoder input, for engine.block_manager.
"""

from __future__ import annotations

import hashlib

import torch

from omnilive.engine.block_manager import MediaSpan
from omnilive.engine.types import EngineError
from omnilive.model.rope_index import MRopeLayout
from omnilive.model.thinker import ThinkerMedia, audio_placeholder_count


def media_spans(input_ids: list[int], media: ThinkerMedia, layout: MRopeLayout) -> tuple[MediaSpan, ...]:
    """The placeholder range of each media item, with a hash of its encoder input (pixels and
    grid, mel frames), so two items with equal placeholder tokens share blocks only when equal.
    Items of a kind take that kind's placeholders in prompt order (a video's audio interleaves
    with its frames: their ranges overlap, which only makes both hashes cover those blocks)."""
    items: list[tuple[int, int, bytes]] = []  # placeholder token, count, content bytes
    merge = layout.spatial_merge_size
    for token, patches, kind in ((layout.image_token_id, media.images, b"image"),
                                 (layout.video_token_id, media.videos, b"video")):
        if patches is None:
            continue
        row = 0
        for index, grid in enumerate(patches.grid_thw.tolist()):
            rows = grid[0] * grid[1] * grid[2]
            seconds = media.video_seconds_per_grid[index] if kind == b"video" else 0.0
            content = b"".join([kind, repr((grid, seconds)).encode(), _bytes(patches.pixel_values[row : row + rows])])
            items.append((token, rows // merge**2, content))
            row += rows
    if media.audio_mel is not None:
        frame = 0
        for frames in media.audio_frames.tolist():
            items.append((layout.audio_token_id, audio_placeholder_count(frames),
                          b"audio" + _bytes(media.audio_mel[:, frame : frame + frames])))
            frame += frames
    spans, taken = [], {}  # taken: placeholders of each kind given to earlier items
    for token, count, content in items:
        where = [i for i, t in enumerate(input_ids) if t == token]
        first = taken.get(token, 0)
        mine = where[first : first + count]
        taken[token] = first + count
        if len(mine) != count:
            raise EngineError(f"the prompt has {len(where)} placeholders {token}, fewer than its media need")
        spans.append(MediaSpan(mine[0], mine[-1] + 1, hashlib.blake2b(content, digest_size=16).hexdigest()))
    return tuple(spans)


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def mrope_layout_of(thinker) -> MRopeLayout:
    """The placeholder ids of an Omni thinker or a Qwen2.5-VL model."""
    config = getattr(thinker, "thinker_config", None) or thinker.vl_config
    return config.mrope_layout


__all__ = ["media_spans", "mrope_layout_of"]
