"""TM-RoPE position ids of a Qwen3-Omni thinker prompt (what transformers' Qwen3-Omni
`get_rope_index` computes for one row without padding), read off the token sequence in one pass.

Where it differs from Qwen2.5-Omni's (model/rope_index.py):
- a video's temporal id is start + patch index x seconds per patch x position_id_per_seconds
  (13 per second in the released checkpoints), and an audio token is one id (80 ms);
- a video with its own audio track, `<|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|>`:
  both markers of a pair get their own id (start, start + 1), video and audio both start after
  them, and their placeholders are merged one token at a time by temporal id (the video token
  first on a tie), not in 2-second chunks; the closing pair starts one past the largest id of
  the last merged run (the remainder of whichever stream lasted longer), as the reference does.
Temporal ids must come out whole (they do for the processor's 2 fps / 2-frame patches: 1 s per
patch); a fractional one is refused rather than rounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnilive.model.rope_index import MRopeLayout, PromptPositions, vision_positions


def _video_ids(grid: Sequence[int], seconds: torch.Tensor, layout: MRopeLayout, start: int) -> torch.Tensor:
    exact = torch.arange(int(grid[0])) * seconds * layout.position_id_per_seconds
    if not torch.equal(exact, exact.floor()):
        raise ValueError(f"video temporal ids {exact.tolist()} are not whole: seconds per patch {float(seconds)} "
                         f"x {layout.position_id_per_seconds} ids per second")
    return vision_positions(grid, seconds, layout, start)


def merge_by_time(video: torch.Tensor, audio: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Video ids [3, V] and audio ids [3, A] merged by temporal id (video first on ties):
    the kinds in prompt order and the runs as the reference appends them (one token each while
    both last, then the remainder)."""
    kinds, runs, v, a = [], [], 0, 0
    while v < video.shape[1] and a < audio.shape[1]:
        if video[0, v] <= audio[0, a]:
            kinds.append("video")
            runs.append(video[:, v : v + 1])
            v += 1
        else:
            kinds.append("audio")
            runs.append(audio[:, a : a + 1])
            a += 1
    for kind, ids, index in (("video", video, v), ("audio", audio, a)):
        if index < ids.shape[1]:
            kinds += [kind] * (ids.shape[1] - index)
            runs.append(ids[:, index:])
    return kinds, runs


def video_with_audio_placeholders(grid_thw: Sequence[int], seconds_per_grid: float, audio_tokens: int,
                                  layout: MRopeLayout) -> list[int]:
    """The placeholders between <|audio_bos|> and <|audio_eos|> of a video with its audio."""
    video = _video_ids(grid_thw, torch.tensor(seconds_per_grid, dtype=torch.float32), layout, 0)
    kinds, _ = merge_by_time(video, torch.arange(audio_tokens).expand(3, -1))
    token = {"video": layout.video_token_id, "audio": layout.audio_token_id}
    return [token[kind] for kind in kinds]


def qwen3_omni_positions(
    input_ids: Sequence[int] | torch.Tensor,
    layout: MRopeLayout,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    video_seconds_per_grid: Sequence[float] | torch.Tensor | None = None,
) -> PromptPositions:
    """TM-RoPE ids [3, T] of one prompt. Audio lengths are read off the placeholder runs; a video
    is "with audio" when its <|vision_bos|> is followed by <|audio_bos|>."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    images = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    grids = video_grid_thw.tolist() if video_grid_thw is not None else []
    seconds = torch.as_tensor(video_seconds_per_grid if video_seconds_per_grid is not None else [],
                              dtype=torch.float32).flatten()
    if len(seconds) != len(grids):
        raise ValueError(f"{len(grids)} video grids but {len(seconds)} video_seconds_per_grid")
    videos = iter(zip(grids, seconds))
    placeholders = {layout.image_token_id, layout.video_token_id, layout.audio_token_id}
    segments: list[torch.Tensor] = []
    next_id = 0

    def emit(segment: torch.Tensor) -> None:
        nonlocal next_id
        segments.append(segment)
        next_id = int(segment.max()) + 1

    def take(items, kind: str):
        item = next(items, None)
        if item is None:
            raise ValueError(f"the prompt has more {kind}s than {kind}_grid_thw rows")
        return item

    def with_audio_at(i: int) -> bool:
        return ids[i : i + 2] == [layout.vision_start_token_id, layout.audio_start_token_id] and \
            i + 2 < len(ids) and ids[i + 2] in (layout.video_token_id, layout.audio_token_id)

    i = 0
    while i < len(ids):
        token = ids[i]
        if with_audio_at(i):
            emit(torch.arange(2).expand(3, -1) + next_id)  # <|vision_bos|><|audio_bos|>
            (grid, grid_seconds), start = take(videos, "video"), next_id
            video = _video_ids(grid, grid_seconds, layout, start)
            end = i + 2
            while end < len(ids) and ids[end] in (layout.video_token_id, layout.audio_token_id):
                end += 1
            audio_tokens = end - (i + 2) - video.shape[1]
            if audio_tokens < 0:
                raise ValueError(f"video with audio at token {i}: fewer placeholders than its grid {grid}")
            kinds, runs = merge_by_time(video, torch.arange(audio_tokens).expand(3, -1) + start)
            expected = [layout.video_token_id if kind == "video" else layout.audio_token_id for kind in kinds]
            if ids[i + 2 : end] != expected:
                raise ValueError(f"video with audio at token {i}: placeholders are not merged by time as expected")
            segments.extend(runs[:-1])
            emit(runs[-1])  # the closing pair starts after the last run, not after the largest id
            if end + 2 > len(ids):
                raise ValueError("video with audio: the prompt ends before <|audio_eos|><|vision_eos|>")
            emit(torch.arange(2).expand(3, -1) + next_id)
            i = end + 2
        elif token in (layout.image_token_id, layout.video_token_id):
            run = sum(1 for _ in _run(ids, i, token))
            if token == layout.image_token_id:
                block = vision_positions(take(images, "image"), 1, layout, next_id)
            else:
                grid, grid_seconds = take(videos, "video")
                block = _video_ids(grid, grid_seconds, layout, next_id)
            if run < block.shape[1]:
                raise ValueError(f"{run} placeholder tokens at {i} for a grid of {block.shape[1]} tokens")
            emit(block)
            i += block.shape[1]
        elif token == layout.audio_token_id:
            run = sum(1 for _ in _run(ids, i, token))
            emit(torch.arange(run).expand(3, -1) + next_id)
            i += run
        else:
            end = i + 1
            while end < len(ids) and ids[end] not in placeholders and not with_audio_at(end):
                end += 1
            emit(torch.arange(end - i).expand(3, -1) + next_id)
            i = end
    leftover = [kind for kind, rest in (("image", images), ("video", videos)) if next(rest, None) is not None]
    if leftover:
        raise ValueError(f"more {' and '.join(leftover)} grids than {'/'.join(leftover)}s in the prompt")
    positions = torch.cat(segments, dim=1).long() if segments else torch.zeros(3, 0, dtype=torch.long)
    delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return PromptPositions(positions, delta)


def _run(ids: list[int], start: int, token: int):
    index = start
    while index < len(ids) and ids[index] == token:
        yield index
        index += 1
