"""TMRoPE position ids against transformers' Qwen2.5-Omni `get_rope_index` (tiny config)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.rope_index import (
    MRopeLayout,
    chunk_bounds,
    mrope_positions,
    video_with_audio_placeholders,
)
from tests.model.omni_tiny import TOKENS, build_tiny_omni

pytest.importorskip("transformers")

LAYOUT = MRopeLayout(
    image_token_id=TOKENS["image_token_index"],
    video_token_id=TOKENS["video_token_index"],
    audio_token_id=TOKENS["audio_token_index"],
    vision_start_token_id=TOKENS["vision_start_token_id"],
    audio_start_token_id=TOKENS["audio_start_token_id"],
)
IMAGE, VIDEO, AUDIO = LAYOUT.image_token_id, LAYOUT.video_token_id, LAYOUT.audio_token_id
VISION_BOS, VISION_EOS = TOKENS["vision_start_token_id"], TOKENS["vision_end_token_id"]
AUDIO_BOS, AUDIO_EOS = TOKENS["audio_start_token_id"], TOKENS["audio_end_token_id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return build_tiny_omni(tmp_path_factory.mktemp("omni"), with_talker=False).thinker


class Prompt:
    """Token ids plus the media metadata both implementations need."""

    def __init__(self):
        self.ids: list[int] = []
        self.images, self.videos, self.seconds, self.audio_frames = [], [], [], []
        self.audio_in_video = False
        self._text_seed = 0

    def text(self, n: int) -> Prompt:
        self._text_seed += 1
        self.ids += torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(self._text_seed)).tolist()
        return self

    def image(self, t: int, h: int, w: int) -> Prompt:
        self.images.append((t, h, w))
        self.ids += [VISION_BOS] + [IMAGE] * (t * h * w // 4) + [VISION_EOS]
        return self

    def video(self, t: int, h: int, w: int, seconds: float) -> Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.ids += [VISION_BOS] + [VIDEO] * (t * h * w // 4) + [VISION_EOS]
        return self

    def audio(self, tokens: int) -> Prompt:
        self.audio_frames.append(4 * tokens)  # 4 mel frames (40 ms) per LM token
        self.ids += [AUDIO_BOS] + [AUDIO] * tokens + [AUDIO_EOS]
        return self

    def video_with_audio(self, t: int, h: int, w: int, seconds: float, audio_tokens: int) -> Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.audio_frames.append(4 * audio_tokens)
        self.audio_in_video = True
        placeholders = video_with_audio_placeholders((t, h, w), seconds, audio_tokens, LAYOUT)
        self.ids += [VISION_BOS, AUDIO_BOS] + placeholders + [AUDIO_EOS, VISION_EOS]
        return self

    def grids(self, kind: str) -> torch.Tensor | None:
        grids = self.images if kind == "image" else self.videos
        return torch.tensor(grids) if grids else None


def expected_positions(reference, prompt: Prompt) -> tuple[torch.Tensor, int]:
    ids = torch.tensor([prompt.ids])
    positions, deltas = reference.get_rope_index(
        ids,
        image_grid_thw=prompt.grids("image"),
        video_grid_thw=prompt.grids("video"),
        attention_mask=torch.ones_like(ids),
        use_audio_in_video=prompt.audio_in_video,
        audio_seqlens=torch.tensor(prompt.audio_frames) if prompt.audio_frames else None,
        second_per_grids=torch.tensor(prompt.seconds) if prompt.seconds else None,
    )
    return positions[:, 0], int(deltas.flatten()[0])


CASES = {
    "text": lambda: Prompt().text(9),
    "image": lambda: Prompt().text(3).image(1, 4, 6).text(5),
    "two_images": lambda: Prompt().text(2).image(1, 4, 6).text(3).image(1, 6, 4).text(4),
    # 0.64 s per temporal patch: 0.64 * 25 truncates to 15 in float32, as in the reference
    "video": lambda: Prompt().text(2).video(3, 4, 4, seconds=0.64).text(3),
    "audio": lambda: Prompt().text(4).audio(11).text(2),
    "audio_and_image": lambda: Prompt().text(2).audio(7).text(1).image(1, 4, 4).text(3),
    "video_with_audio": lambda: Prompt().text(3).video_with_audio(3, 4, 4, seconds=1.0, audio_tokens=70).text(4),
    # more video chunks than audio chunks, and a trailing video chunk
    "video_longer_than_audio": lambda: Prompt().text(1).video_with_audio(5, 2, 2, seconds=1.0, audio_tokens=30).text(2),
    "video_with_audio_then_image": lambda: (
        Prompt().video_with_audio(2, 4, 4, seconds=2.0, audio_tokens=60).text(2).image(1, 4, 4).text(1)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_positions_match_transformers(reference, case):
    prompt = CASES[case]()
    expected, expected_delta = expected_positions(reference, prompt)
    got = mrope_positions(
        prompt.ids, LAYOUT, prompt.grids("image"), prompt.grids("video"), prompt.seconds or None
    )
    assert got.positions.shape == (3, len(prompt.ids))
    assert torch.equal(got.positions, expected)
    assert got.delta == expected_delta


def test_video_with_audio_interleaves_two_second_chunks():
    # 1 s per temporal patch → frames at ids 0, 25, 50; chunks of 50 ids: frames {0, 25}, {50};
    # 70 audio tokens → {0..49}, {50..69}. Each frame is 2 x 2 merge units.
    layout = video_with_audio_placeholders((3, 4, 4), 1.0, 70, LAYOUT)
    assert layout == [VIDEO] * 8 + [AUDIO] * 50 + [VIDEO] * 4 + [AUDIO] * 20


def test_chunk_bounds_move_one_chunk_per_token():
    assert chunk_bounds([0, 10, 49, 50, 99, 100], 50) == [(0, 3), (3, 5), (5, 6)]
    # a jump over two boundaries cuts once, then the next token cuts again
    assert chunk_bounds([0, 120, 130], 50) == [(0, 1), (1, 2), (2, 3)]


def test_decode_positions_continue_after_the_largest_id():
    prompt = Prompt().text(2).image(1, 8, 8).text(1)  # image ids reach start + 3 on h and w
    got = mrope_positions(prompt.ids, LAYOUT, prompt.grids("image"))
    assert got.delta == int(got.positions.max()) + 1 - len(prompt.ids)
    assert got.decode_positions(torch.tensor([len(prompt.ids)])).item() == int(got.positions.max()) + 1


def test_placeholders_that_do_not_fit_the_grid_are_an_error():
    prompt = Prompt().text(2).image(1, 4, 6)
    prompt.ids.remove(IMAGE)
    with pytest.raises(ValueError, match="placeholder tokens"):
        mrope_positions(prompt.ids, LAYOUT, prompt.grids("image"))
    with pytest.raises(ValueError, match="more image grids"):
        mrope_positions(Prompt().text(3).ids, LAYOUT, torch.tensor([(1, 4, 4)]))
