"""Our Qwen3-VL processor against transformers' Qwen3VLProcessor, built from its parts (its
from_pretrained needs torchvision, which we cannot install), on the same messages: input ids
(video timestamps included), pixel values, grid sizes and M-RoPE position ids.

A video's layout: transformers 5.23 replaces the template's `<|video_pad|>` alone, so its frame
groups end up inside the template's `<|vision_start|>` … `<|vision_end|>`; Qwen's own processor
(transformers up to 4.57, vLLM, SGLang) replaces the whole marked placeholder, the layout
Qwen3-VL was trained on, and so do we. transformers gets the template text with each
`<|vision_start|><|video_pad|><|vision_end|>` written `<|video_pad|>`: it then writes that layout.

Video: transformers' Qwen3VLVideoProcessor needs torchvision, so `Qwen3FramesVideoProcessor`
stands in for its resize + patchify: the frame size from transformers' own
video_processing_qwen3_vl.smart_resize (all frames share one pixel budget), each frame
resized with Pillow bicubic and normalised by transformers' Pillow image processor, frame
pairs laid out (C, T, P, P). The timestamps, token expansion and get_rope_index are
transformers' own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnilive.backends.native_omni import load_omni
from omnilive.backends.native_vl import frame_group_seconds
from omnilive.types import ImageInput, Message, VideoInput
from tests.media.test_processor_parity import media_of, picture, template_messages
from tests.model.qwen3_vl_tiny import build_tiny_qwen3_vl
from tests.model.vl_tiny import IMAGE, VIDEO, without_video_class_check

transformers = pytest.importorskip("transformers")

FPS = 2.0
MARKED_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


class Qwen3FramesVideoProcessor:
    """Stands in for transformers' Qwen3VLVideoProcessor (see the module docstring)."""

    def __init__(self, config: dict):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.patch_size, self.merge_size = config["patch_size"], config["merge_size"]
        self.temporal_patch_size = config["temporal_patch_size"]
        self.size = config["size"]
        self.frames = Qwen2VLImageProcessorPil(do_resize=False, patch_size=self.patch_size, temporal_patch_size=1,
                                               merge_size=self.merge_size, image_mean=config["image_mean"],
                                               image_std=config["image_std"])

    def __call__(self, videos, **kwargs):
        from transformers import BatchFeature
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize
        from transformers.video_utils import VideoMetadata

        rows, grids, metadata = [], [], []
        for frames in videos:
            height, width = smart_resize(len(frames), frames[0].height, frames[0].width,
                                         temporal_factor=self.temporal_patch_size,
                                         factor=self.patch_size * self.merge_size,
                                         min_pixels=self.size["shortest_edge"], max_pixels=self.size["longest_edge"])
            resized = [frame.resize((width, height), resample=Image.Resampling.BICUBIC) for frame in frames]
            out = self.frames(images=resized, return_tensors="pt")
            (_, grid_h, grid_w), units = out["image_grid_thw"][0].tolist(), int(out["image_grid_thw"][0].prod())
            per_frame = out["pixel_values"].reshape(len(frames), units, 3, self.patch_size**2)
            pad = -len(frames) % self.temporal_patch_size
            per_frame = torch.cat([per_frame, per_frame[-1:].expand(pad, -1, -1, -1)])
            grid_t = per_frame.shape[0] // self.temporal_patch_size
            pairs = per_frame.reshape(grid_t, self.temporal_patch_size, units, 3, self.patch_size**2)
            rows.append(pairs.permute(0, 2, 3, 1, 4).reshape(grid_t * units, -1))
            grids.append([grid_t, grid_h, grid_w])
            metadata.append(VideoMetadata(total_num_frames=len(frames), fps=FPS, frames_indices=list(range(len(frames)))))
        return BatchFeature({"pixel_values_videos": torch.cat(rows), "video_grid_thw": torch.tensor(grids),
                             "video_metadata": metadata})


def transformers_qwen3_vl_processor(directory):
    """transformers' Qwen3VLProcessor from its parts and this checkpoint's files."""
    from transformers import Qwen2TokenizerFast, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = json.loads((directory / "preprocessor_config.json").read_text())
    video = json.loads((directory / "video_preprocessor_config.json").read_text())
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    return without_video_class_check(Qwen3VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**{k: image[k] for k in keys}),
        tokenizer=tokenizer,
        video_processor=Qwen3FramesVideoProcessor(video),
        chat_template=json.loads((directory / "chat_template.json").read_text())["chat_template"],
    )


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    tiny = build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3_vl"), seed=3)
    return tiny, load_omni(tiny.directory, "float32"), transformers_qwen3_vl_processor(tiny.directory)


def video(seed: int, frames: int, size: tuple[int, int]) -> VideoInput:
    return VideoInput(tuple(picture(seed + i, size) for i in range(frames)), fps=FPS, audio=None)


CASES = {
    "image": (Message("user", ("What is this?", ImageInput(picture(0, (90, 60))))),),
    "two_images": (Message("user", (ImageInput(picture(1, (50, 130))), "and", ImageInput(picture(2, (200, 120))),
                                    "Compare them.")),),
    # 5 frames (the last repeated to fill 3 temporal patches) of 110 x 60, resized together
    "video": (Message("user", ("What happens?", video(10, 5, (110, 60)))),),
    "image_and_video": (
        Message("system", ("Be brief.",)),
        Message("user", (ImageInput(picture(3, (64, 64))), video(20, 4, (160, 96)), "Same scene?")),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_qwen3_vl_processor_equals_transformers(qwen3_vl, case):
    tiny, ours, reference = qwen3_vl
    messages = CASES[case]
    text = reference.apply_chat_template(template_messages(messages), add_generation_prompt=True, tokenize=False)
    text = text.replace(MARKED_VIDEO, "<|video_pad|>")  # Qwen's layout (see the module docstring)
    images = [item.image for item in media_of(messages, ImageInput)] or None
    videos = [list(item.frames) for item in media_of(messages, VideoInput)] or None
    expected = reference(text=[text], images=images, videos=videos, return_tensors="pt")
    prompt = ours.processor.build(messages)
    media = prompt.media

    assert prompt.input_ids == expected["input_ids"][0].tolist()
    if images:
        assert torch.equal(media.images.grid_thw, expected["image_grid_thw"])
        assert torch.allclose(media.images.pixel_values, expected["pixel_values"], atol=1e-6)
    if videos:
        assert torch.equal(media.videos.grid_thw, expected["video_grid_thw"])
        assert torch.allclose(media.videos.pixel_values, expected["pixel_values_videos"], atol=1e-6)
        assert "seconds>" in ours.tokenizer.decode(prompt.input_ids)

    ids = expected["input_ids"]
    positions, deltas = tiny.model.model.get_rope_index(
        ids, mm_token_type_ids=expected["mm_token_type_ids"], image_grid_thw=expected.get("image_grid_thw"),
        video_grid_thw=expected.get("video_grid_thw"), attention_mask=expected["attention_mask"])
    assert torch.equal(expected["mm_token_type_ids"], (ids == IMAGE).long() + 2 * (ids == VIDEO).long())
    rope = ours.thinker.prepare_prompt(prompt.input_ids, media).rope
    assert torch.equal(rope.positions, positions[:, 0])
    assert rope.delta == int(deltas.flatten()[0])


def test_a_video_is_its_timestamped_frame_groups_without_the_templates_markers(qwen3_vl):
    tiny, ours, reference = qwen3_vl
    messages = CASES["video"]
    text = ours.tokenizer.decode(ours.processor.build(messages).input_ids).replace("<|video_pad|>", "V")
    frame = "<|vision_start|>" + "V" * 6 + "<|vision_end|>"  # 2 x 3 merge units
    groups = f"<0.2 seconds>{frame}<1.2 seconds>{frame}<2.0 seconds>{frame}"
    assert f"user\nWhat happens?{groups}<|im_end|>" in text
    # transformers 5.23 on the template text as it is keeps the template's markers around them
    templated = reference.apply_chat_template(template_messages(messages), add_generation_prompt=True, tokenize=False)
    expanded = reference(text=[templated], videos=[list(media_of(messages, VideoInput)[0].frames)],
                         return_tensors="pt")
    theirs = reference.tokenizer.decode(expanded["input_ids"][0]).replace("<|video_pad|>", "V")
    assert f"What happens?<|vision_start|>{groups}<|vision_end|><|im_end|>" in theirs


def test_frame_group_times_are_the_mean_of_their_frames():
    assert frame_group_seconds(5, 2.0, 2) == [0.25, 1.25, 2.0]  # the 5th frame (2.0 s) fills the last pair
    assert np.allclose(frame_group_seconds(4, 4.0, 2), [0.125, 0.625])
