"""TMRoPE position ids of a Qwen2.5-Omni prompt (time-aligned multimodal rotary positions).

Every prompt token gets three ids (temporal, height, width):

- text (including the <|vision_bos|> / <|audio_bos|> style markers): all three equal, one more
  than the largest id of the segment before it;
- an image: a (h/2 x w/2) grid of merge units; t = start, h = start + row, w = start + column;
- a video: the same grid per temporal patch, with t = start + the patch's time in
  `position_id_per_seconds` units (25 per second: one id per 40 ms);
- an audio: one id per token (each token covers 40 ms), the same on all three axes;
- a video with its own audio track (<|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|>):
  video and audio both start at the same id, so a frame and the sound at its time share
  temporal ids; their tokens are interleaved in `seconds_per_chunk` chunks (video chunk,
  then audio chunk) and both marker pairs get one id each.

Equal to transformers' `Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_rope_index`
(one row, no padding), but read off the token sequence in one pass instead of searching it.
The same walk serves Qwen3-Omni, whose video with audio is laid out otherwise
(model/qwen3_omni_rope.py passes its `VideoWithAudioLayout`).
After the prompt, the token at cache index i has ids i + delta on all three axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MRopeLayout:
    """The token ids and timing constants the position ids depend on (from ThinkerConfig)."""

    image_token_id: int
    video_token_id: int
    audio_token_id: int
    vision_start_token_id: int
    audio_start_token_id: int
    spatial_merge_size: int = 2
    position_id_per_seconds: int | float = 25
    seconds_per_chunk: int | float = 2

    @property
    def ids_per_chunk(self) -> int:
        return int(self.position_id_per_seconds * self.seconds_per_chunk)


@dataclass(frozen=True)
class PromptPositions:
    positions: torch.Tensor  # [3, T] long
    delta: int  # the token at cache index i >= T gets ids i + delta on all three axes

    def decode_positions(self, cache_positions: torch.Tensor) -> torch.Tensor:
        """Rotary positions of generated tokens from their cache positions (any shape)."""
        return cache_positions + self.delta


def vision_positions(grid_thw: Sequence[int], seconds_per_grid, layout: MRopeLayout, start: int) -> torch.Tensor:
    """[3, t * h/2 * w/2] ids of one image or video (merge units in row-major order per frame).

    seconds_per_grid: 1 for images (an int, as the reference multiplies), the float32 seconds
    per temporal patch for videos; the product is truncated to an integer id.
    """
    t, h, w = (int(v) for v in grid_thw)
    units_h, units_w = h // layout.spatial_merge_size, w // layout.spatial_merge_size
    t_index = (torch.arange(t) * seconds_per_grid * layout.position_id_per_seconds).long()
    t_ids = t_index.view(-1, 1).expand(-1, units_h * units_w).flatten()
    h_ids = torch.arange(units_h).view(1, -1, 1).expand(t, -1, units_w).flatten()
    w_ids = torch.arange(units_w).view(1, 1, -1).expand(t, units_h, -1).flatten()
    return torch.stack([t_ids, h_ids, w_ids]) + start


def chunk_bounds(time_ids: Sequence[int], ids_per_chunk: int) -> list[tuple[int, int]]:
    """(start, end) slices of a non-decreasing id list, cutting where an id reaches the next
    multiple of ids_per_chunk. Moves one chunk per token, as the reference does, so a jump
    over several chunk boundaries yields one cut, not several."""
    bounds, start, chunk = [], 0, 1
    for index, value in enumerate(time_ids):
        if value >= chunk * ids_per_chunk:
            bounds.append((start, index))
            start, chunk = index, chunk + 1
    bounds.append((start, len(time_ids)))
    return bounds


def _interleaved_chunks(
    video: torch.Tensor, audio: torch.Tensor, start: int, layout: MRopeLayout
) -> tuple[list[str], list[torch.Tensor]]:
    """A video with audio cut into 2-second chunks, video chunk then audio chunk: the kind of
    each placeholder in prompt order and the chunks' ids [3, n]."""
    video_bounds = chunk_bounds((video[0] - start).tolist(), layout.ids_per_chunk)
    audio_bounds = chunk_bounds((audio[0] - start).tolist(), layout.ids_per_chunk)
    kinds, runs = [], []
    for index in range(max(len(video_bounds), len(audio_bounds))):
        for kind, ids, bounds in (("video", video, video_bounds), ("audio", audio, audio_bounds)):
            if index < len(bounds):
                runs.append(ids[:, slice(*bounds[index])])
                kinds += [kind] * runs[-1].shape[1]
    return kinds, runs


@dataclass(frozen=True)
class VideoWithAudioLayout:
    """How a family places a video with its own audio track, <|vision_bos|><|audio_bos|>
    placeholders <|audio_eos|><|vision_eos|>, and its videos' temporal ids."""

    opens_at: Callable[[list[int], int, MRopeLayout], bool]  # such a video starts at token i
    marker_ids: Callable[[int], torch.Tensor]  # ids [3, 2] of a marker pair from the next free id
    video_ids: Callable[[Sequence[int], object, MRopeLayout, int], torch.Tensor]  # (grid, seconds, layout, start)
    # (video ids, audio ids, start, layout) → each placeholder's kind in prompt order, the runs' ids
    merge: Callable[[torch.Tensor, torch.Tensor, int, MRopeLayout], tuple[list[str], list[torch.Tensor]]]
    merge_name: str  # how the placeholders are laid out, for errors


QWEN2_5_OMNI_VIDEO_WITH_AUDIO = VideoWithAudioLayout(
    opens_at=lambda ids, i, layout: ids[i : i + 3] == [
        layout.vision_start_token_id, layout.audio_start_token_id, layout.video_token_id],
    marker_ids=lambda next_id: torch.full((3, 2), next_id),  # both markers of a pair share one id
    video_ids=vision_positions,
    merge=_interleaved_chunks,
    merge_name="interleaved",
)


def video_with_audio_placeholders(
    grid_thw: Sequence[int], seconds_per_grid: float, audio_tokens: int, layout: MRopeLayout,
    family: VideoWithAudioLayout = QWEN2_5_OMNI_VIDEO_WITH_AUDIO,
) -> list[int]:
    """The placeholder ids a prompt carries for a video with its audio, between <|audio_bos|>
    and <|audio_eos|>: video and audio tokens laid out as the family lays them."""
    video = family.video_ids(grid_thw, torch.tensor(seconds_per_grid, dtype=torch.float32), layout, 0)
    kinds, _ = family.merge(video, torch.arange(audio_tokens).expand(3, -1), 0, layout)
    token = {"video": layout.video_token_id, "audio": layout.audio_token_id}
    return [token[kind] for kind in kinds]


def _run_length(ids: list[int], start: int, token: int) -> int:
    end = start
    while end < len(ids) and ids[end] == token:
        end += 1
    return end - start


def mrope_positions(
    input_ids: Sequence[int] | torch.Tensor,
    layout: MRopeLayout,
    image_grid_thw: torch.Tensor | None = None,  # [images, 3] in prompt order
    video_grid_thw: torch.Tensor | None = None,  # [videos, 3] in prompt order
    video_seconds_per_grid: Sequence[float] | torch.Tensor | None = None,  # [videos]
    family: VideoWithAudioLayout = QWEN2_5_OMNI_VIDEO_WITH_AUDIO,
) -> PromptPositions:
    """TMRoPE ids of one prompt. Audio lengths are read off the placeholder runs; a video is
    "with audio" where `family.opens_at` says so."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    images = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    video_grids = video_grid_thw.tolist() if video_grid_thw is not None else []
    # float32 seconds, as the reference multiplies them: the truncated ids depend on it
    video_seconds = torch.as_tensor(video_seconds_per_grid if video_seconds_per_grid is not None else [],
                                    dtype=torch.float32).flatten()
    if len(video_seconds) != len(video_grids):
        raise ValueError(f"{len(video_grids)} video grids but {len(video_seconds)} video_seconds_per_grid")
    videos = iter(zip(video_grids, video_seconds))
    media = {layout.image_token_id, layout.video_token_id, layout.audio_token_id}

    segments: list[torch.Tensor] = []
    next_id = 0  # the last segment's largest id + 1: where the next segment starts

    def emit(segment: torch.Tensor) -> None:
        nonlocal next_id
        segments.append(segment)
        next_id = int(segment.max()) + 1

    def next_item(items, kind: str):
        item = next(items, None)
        if item is None:
            raise ValueError(f"the prompt has more {kind}s than {kind}_grid_thw rows")
        return item

    i = 0
    while i < len(ids):
        token = ids[i]
        if family.opens_at(ids, i, layout):
            emit(family.marker_ids(next_id))  # <|vision_bos|><|audio_bos|>
            (grid, seconds), start = next_item(videos, "video"), next_id
            video = family.video_ids(grid, seconds, layout, start)
            end = i + 2
            while end < len(ids) and ids[end] in (layout.video_token_id, layout.audio_token_id):
                end += 1
            audio_tokens = end - (i + 2) - video.shape[1]
            if audio_tokens < 0:
                raise ValueError(f"video with audio at token {i}: fewer placeholders than its grid {grid}")
            kinds, runs = family.merge(video, torch.arange(audio_tokens).expand(3, -1) + start, start, layout)
            expected = [layout.video_token_id if kind == "video" else layout.audio_token_id for kind in kinds]
            if ids[i + 2 : end] != expected:
                raise ValueError(f"video with audio at token {i}: placeholders are not {family.merge_name} as expected")
            for run in runs:  # the closing pair starts after the last run, not after the largest id
                emit(run)
            if end + 2 > len(ids):
                raise ValueError("video with audio: the prompt ends before <|audio_eos|><|vision_eos|>")
            emit(family.marker_ids(next_id))  # <|audio_eos|><|vision_eos|>
            i = end + 2
        elif token in (layout.image_token_id, layout.video_token_id):
            run = _run_length(ids, i, token)
            if token == layout.image_token_id:
                grid = next_item(images, "image")
                block = vision_positions(grid, 1, layout, next_id)
            else:
                grid, seconds = next_item(videos, "video")
                block = family.video_ids(grid, seconds, layout, next_id)
            if run < block.shape[1]:
                raise ValueError(f"{run} placeholder tokens at {i} for a grid {grid} of {block.shape[1]} tokens")
            emit(block)
            i += block.shape[1]  # adjacent items of one kind may share a run
        elif token == layout.audio_token_id:
            run = _run_length(ids, i, token)
            emit(torch.arange(run).expand(3, -1) + next_id)
            i += run
        else:
            end = i + 1
            while end < len(ids) and ids[end] not in media and not family.opens_at(ids, end, layout):
                end += 1
            emit(torch.arange(end - i).expand(3, -1) + next_id)
            i = end

    leftover = [kind for kind, rest in (("image", images), ("video", videos)) if next(rest, None) is not None]
    if leftover:
        raise ValueError(f"more {' and '.join(leftover)} grids than {'/'.join(leftover)}s in the prompt")
    positions = torch.cat(segments, dim=1).long() if segments else torch.zeros(3, 0, dtype=torch.long)
    delta = (int(positions.max()) + 1 - len(ids)) if len(ids) else 0
    return PromptPositions(positions, delta)
