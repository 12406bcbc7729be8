"""A tiny random Qwen2.5-VL checkpoint that `omnilive serve --model DIR` can serve, built with
transformers' own classes.

    tiny = build_tiny_vl(tmp_path, seed=0)
    tiny.directory   # config.json + model.safetensors, tokenizer.json, tokenizer_config.json,
                     # chat_template.json, preprocessor_config.json, video_preprocessor_config.json
    tiny.model       # the transformers Qwen2_5_VLForConditionalGeneration (float32, eval)

Token ids follow tests/model/test_qwen2_5_vl.py (media tokens at 141..146 of 160); the
tokenizer is a byte-level BPE trained on a few sentences with Qwen2.5-VL's added tokens at
the top of the vocabulary; the chat template is Qwen2.5-VL-Instruct's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnilive.backends.native_vl import VL_CHAT_TEMPLATE
from tests.model.omni_tiny import PREPROCESSOR, VIDEO_PREPROCESSOR, randomize

VOCAB = 160
IMAGE, VIDEO, VISION_BOS, VISION_EOS = 141, 142, 145, 146
TOKENS_PER_SECOND = 2
SPECIAL_TOKENS = {
    "<|image_pad|>": IMAGE, "<|video_pad|>": VIDEO, "<|vision_start|>": VISION_BOS, "<|vision_end|>": VISION_EOS,
    "<|object_ref_start|>": 140, "<|object_ref_end|>": 143, "<|box_start|>": 144, "<|box_end|>": 147,
    "<|quad_start|>": 148, "<|quad_end|>": 149, "<|vision_pad|>": 150, "<tool_call>": 151,
    "<|endoftext|>": 152, "<|im_start|>": 153, "<|im_end|>": 154, "</tool_call>": 155, "<|fim_prefix|>": 156,
    "<|fim_middle|>": 157, "<|fim_suffix|>": 158, "<|fim_pad|>": 159, "<|repo_name|>": 138, "<|file_sep|>": 139,
}
BPE_VOCAB = min(SPECIAL_TOKENS.values())  # learned tokens take ids 0..137
CORPUS = [
    "You are a helpful assistant. What is in this picture? Describe the image and the video briefly.",
    "system\nuser\nassistant\nThe quick brown fox jumps over the lazy dog. Say hello in one short sentence!",
]
VL_PREPROCESSOR = {**{k: v for k, v in PREPROCESSOR.items() if k in (
    "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")},
    "processor_class": "Qwen2_5_VLProcessor", "image_processor_type": "Qwen2VLImageProcessor"}


@dataclass
class TinyVL:
    directory: Path
    model: torch.nn.Module  # transformers Qwen2_5_VLForConditionalGeneration


def tiny_vl_config():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "bos_token_id": None, "eos_token_id": None,
            # head_dim 16: 8 rotary frequencies, 2 for time, 3 for height, 3 for width
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64,
            "window_size": 56, "fullatt_block_indexes": [1], "tokens_per_second": TOKENS_PER_SECOND,
        },
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_BOS, vision_end_token_id=VISION_EOS,
    )


def tiny_qwen2_vl_config():
    """Qwen2-VL (QVQ's architecture): the same text model and tokens, its older ViT."""
    from transformers import Qwen2VLConfig

    text = tiny_vl_config().text_config.to_dict()
    return Qwen2VLConfig(
        text_config={key: text[key] for key in ("vocab_size", "hidden_size", "intermediate_size",
                                                "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                "max_position_embeddings", "rope_parameters")},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_BOS, vision_end_token_id=VISION_EOS,
    )


def build_tiny_vl(directory: str | Path, seed: int = 0, with_tokenizer: bool = True,
                  family: str = "qwen2_5_vl") -> TinyVL:
    """family: "qwen2_5_vl" or "qwen2_vl"."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    torch.manual_seed(seed)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # tiny vocabularies trip token-id range warnings
    try:
        if family == "qwen2_vl":
            model = Qwen2VLForConditionalGeneration(tiny_qwen2_vl_config()).float().eval()
        else:
            model = Qwen2_5_VLForConditionalGeneration(tiny_vl_config()).float().eval()
        randomize(model, seed)
        model.save_pretrained(directory)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if with_tokenizer:
        write_vl_tokenizer(directory)
    return TinyVL(directory, model)


def build_vl_tokenizer(special_tokens: dict[str, int] | None = None, plain_tokens: dict[str, int] | None = None):
    """A `tokenizers.Tokenizer` of VOCAB ids with every special token (SPECIAL_TOKENS by
    default) and every plain added token (such as Qwen3's `<think>`, not special) at its id;
    learned tokens take the ids below the lowest of them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # GPT-2's byte → character map: printable ASCII stands for itself; space and newline shift by 256
    alphabet = [chr(c) for c in range(33, 127)] + [chr(256 + c) for c in (ord(" "), ord("\n"))]
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = byte_level
    special_tokens, plain_tokens = special_tokens or SPECIAL_TOKENS, plain_tokens or {}
    learner.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=min({**special_tokens, **plain_tokens}.values()),
                                                            initial_alphabet=alphabet,
                                                            show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={**learned["vocab"], **special_tokens, **plain_tokens}, merges=merges))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in plain_tokens])
    return tokenizer


def write_vl_tokenizer(directory: str | Path) -> None:
    """The tokenizer and processor files a Qwen2.5-VL-Instruct checkpoint ships."""
    directory = Path(directory)
    build_vl_tokenizer().save(str(directory / "tokenizer.json"))
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for t, i in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "model_max_length": 1024, "added_tokens_decoder": added}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": VL_CHAT_TEMPLATE}, indent=1))
    (directory / "preprocessor_config.json").write_text(json.dumps(VL_PREPROCESSOR, indent=1))
    (directory / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR, indent=1))


class FramesVideoProcessor:
    """Stands in for transformers' Qwen2VLVideoProcessor, which needs torchvision (not installable
    here): every frame resized (Pillow bicubic, the video pixel range), rescaled and normalised by
    transformers' own Pillow Qwen2VLImageProcessor, then frames grouped in pairs into rows laid
    out (C, T, P, P) as that video processor's patchify does, the last frame repeated to fill a
    pair. Frames come as the decoder sampled them, at `fps` (sampled_fps, as its metadata says)."""

    def __init__(self, fps: float, min_pixels: int, max_pixels: int, patch_size: int = 14,
                 temporal_patch_size: int = 2, merge_size: int = 2):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.fps, self.patch_size, self.merge_size = fps, patch_size, merge_size
        self.temporal_patch_size = temporal_patch_size
        self.frames = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size,
                                               temporal_patch_size=1, merge_size=merge_size)

    def __call__(self, videos, **kwargs):
        from types import SimpleNamespace

        from transformers import BatchFeature

        rows, grids = [], []
        for frames in videos:
            out = self.frames(images=list(frames), return_tensors="pt")
            (_, grid_h, grid_w), units = out["image_grid_thw"][0].tolist(), int(out["image_grid_thw"][0].prod())
            per_frame = out["pixel_values"].reshape(len(frames), units, 3, self.patch_size**2)
            pad = -len(frames) % self.temporal_patch_size
            per_frame = torch.cat([per_frame, per_frame[-1:].expand(pad, -1, -1, -1)])
            grid_t = per_frame.shape[0] // self.temporal_patch_size
            pairs = per_frame.reshape(grid_t, self.temporal_patch_size, units, 3, self.patch_size**2)
            rows.append(pairs.permute(0, 2, 3, 1, 4).reshape(grid_t * units, -1))  # (C, T, P·P) per row
            grids.append([grid_t, grid_h, grid_w])
        metadata = [SimpleNamespace(sampled_fps=self.fps) for _ in videos]
        return BatchFeature({"pixel_values_videos": torch.cat(rows), "video_grid_thw": torch.tensor(grids),
                             "video_metadata": metadata})


def without_video_class_check(processor_class):
    """The processor class with its video part's class check skipped: the check looks the class
    up in transformers' video processor registry, which cannot load without torchvision."""

    class Checked(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name != "video_processor":
                return super().check_argument_for_proper_class(argument_name, argument)

    return Checked


def transformers_vl_processor(directory: str | Path, fps: float = 2.0):
    """transformers' Qwen2_5_VLProcessor built from its parts and this checkpoint's files: the
    tokenizer, the Pillow image processor, FramesVideoProcessor for video, the chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2TokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    directory = Path(directory)
    image = json.loads((directory / "preprocessor_config.json").read_text())
    video = json.loads((directory / "video_preprocessor_config.json").read_text())
    keys = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    template = json.loads((directory / "chat_template.json").read_text())["chat_template"]
    return without_video_class_check(Qwen2_5_VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**{k: image[k] for k in keys if k in image}),
        tokenizer=tokenizer,
        video_processor=FramesVideoProcessor(fps, video["min_pixels"], video["max_pixels"]),
        chat_template=template,
    )
