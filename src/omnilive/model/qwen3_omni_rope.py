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

from omnilive.model import rope_index
from omnilive.model.rope_index import (
    MRopeLayout,
    PromptPositions,
    VideoWithAudioLayout,
    mrope_positions,
    vision_positions,
)


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


def _opens_at(ids: list[int], i: int, layout: MRopeLayout) -> bool:
    return ids[i : i + 2] == [layout.vision_start_token_id, layout.audio_start_token_id] and \
        i + 2 < len(ids) and ids[i + 2] in (layout.video_token_id, layout.audio_token_id)


QWEN3_OMNI_VIDEO_WITH_AUDIO = VideoWithAudioLayout(
    opens_at=_opens_at,
    marker_ids=lambda next_id: torch.arange(2).expand(3, -1) + next_id,  # each marker its own id
    video_ids=_video_ids,
    merge=lambda video, audio, start, layout: merge_by_time(video, audio),
    merge_name="merged by time",
)


def video_with_audio_placeholders(grid_thw: Sequence[int], seconds_per_grid: float, audio_tokens: int,
                                  layout: MRopeLayout) -> list[int]:
    """The placeholders between <|audio_bos|> and <|audio_eos|> of a video with its audio."""
    return rope_index.video_with_audio_placeholders(grid_thw, seconds_per_grid, audio_tokens, layout,
                                                    QWEN3_OMNI_VIDEO_WITH_AUDIO)


def qwen3_omni_positions(
    input_ids: Sequence[int] | torch.Tensor,
    layout: MRopeLayout,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    video_seconds_per_grid: Sequence[float] | torch.Tensor | None = None,
) -> PromptPositions:
    """TM-RoPE ids [3, T] of one prompt. Audio lengths are read off the placeholder runs; a video
    is "with audio" when its <|vision_bos|> is followed by <|audio_bos|>."""
    return mrope_positions(input_ids, layout, image_grid_thw, video_grid_thw, video_seconds_per_grid,
                           QWEN3_OMNI_VIDEO_WITH_AUDIO)
