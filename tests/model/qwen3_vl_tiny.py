"""Tiny random Qwen3-VL and Qwen3-VL-MoE checkpoints that `omnilive serve --model DIR` can serve,
built with transformers' own classes.

    tiny = build_tiny_qwen3_vl(tmp_path, seed=0, moe=False, thinking=False)
    tiny.directory   # config.json + model.safetensors, tokenizer files, chat template,
                     # preprocessor_config.json, video_preprocessor_config.json
    tiny.model       # transformers' Qwen3VLForConditionalGeneration / Qwen3VLMoeForConditionalGeneration

Token ids are tests/model/vl_tiny.py's (media tokens at 141..146 of 160) plus `<think>` and
`</think>` at 136 and 137 (single tokens, as in Qwen3's vocabulary). The chat template is
omnilive's short form of Qwen3-VL's (backends/native_vl.py QWEN3_VL_CHAT_TEMPLATE: no default
system prompt, `<|vision_start|><|image_pad|><|vision_end|>` per image, `<|video_pad|>` per
video); the Thinking variant's generation prompt opens the think block. A Thinking checkpoint's `</think>` and stop rows of lm_head are zeroed, so greedy
decoding thinks until the engine's budget ends it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnilive.backends.native_vl import QWEN3_VL_CHAT_TEMPLATE
from tests.model import vl_tiny
from tests.model.omni_tiny import randomize
from tests.model.vl_tiny import IMAGE, VIDEO, VISION_BOS, VISION_EOS

VOCAB = vl_tiny.VOCAB
THINK, END_THINK = 136, 137
THINK_TOKENS = {"<think>": THINK, "</think>": END_THINK}  # added tokens, not special ones (as in Qwen3)
SPECIAL_TOKENS = vl_tiny.SPECIAL_TOKENS
PATCH = 16
PREPROCESSOR = {  # Qwen3-VL's preprocessor_config.json keys, tiny sizes
    "size": {"shortest_edge": 32 * 32, "longest_edge": 96 * 96}, "patch_size": PATCH, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
}
VIDEO_PREPROCESSOR = {  # the video budget covers all frames together
    "size": {"shortest_edge": 32 * 32, "longest_edge": 4 * 64 * 96}, "patch_size": PATCH, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "fps": 2,
    "video_processor_type": "Qwen3VLVideoProcessor",
}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48, "decoder_sparse_step": 1,
       "mlp_only_layers": [1]}


@dataclass
class TinyQwen3VL:
    directory: Path
    model: torch.nn.Module


def tiny_qwen3_vl_config(moe: bool = False):
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text = {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6, "bos_token_id": None, "eos_token_id": None,
        # 8 rotary frequencies interleaved t h w t h w t h: 3 for t, 3 for h, 2 for w
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                            "mrope_interleaved": True},
    }
    vision = {
        "depth": 3, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64,
        "patch_size": PATCH, "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1],
    }
    ids = {"image_token_id": IMAGE, "video_token_id": VIDEO, "vision_start_token_id": VISION_BOS,
           "vision_end_token_id": VISION_EOS}
    if moe:
        return Qwen3VLMoeConfig(text_config={**text, **MOE}, vision_config=vision, tie_word_embeddings=False, **ids)
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny_qwen3_vl(directory: str | Path, seed: int = 0, moe: bool = False, thinking: bool = False,
                        with_tokenizer: bool = True) -> TinyQwen3VL:
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    torch.manual_seed(seed)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # tiny vocabularies trip token-id range warnings
    try:
        cls = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
        model = cls(tiny_qwen3_vl_config(moe)).float().eval()
        randomize(model, seed)
        if thinking:
            with torch.no_grad():
                for token in (END_THINK, SPECIAL_TOKENS["<|im_end|>"], SPECIAL_TOKENS["<|endoftext|>"]):
                    model.lm_head.weight[token] = 0.0
        model.save_pretrained(directory)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if with_tokenizer:
        write_tokenizer(directory, thinking)
    return TinyQwen3VL(directory, model)


def write_tokenizer(directory: Path, thinking: bool) -> None:
    """The tokenizer and processor files a Qwen3-VL checkpoint ships."""
    tokenizer = vl_tiny.build_vl_tokenizer(SPECIAL_TOKENS, THINK_TOKENS)
    tokenizer.save(str(directory / "tokenizer.json"))
    added = {str(i): {"content": t, "special": t not in THINK_TOKENS, "lstrip": False, "rstrip": False,
                      "normalized": False, "single_word": False}
             for t, i in sorted({**SPECIAL_TOKENS, **THINK_TOKENS}.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "model_max_length": 1024, "added_tokens_decoder": added}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    template = QWEN3_VL_CHAT_TEMPLATE
    if thinking:  # the Thinking checkpoints' generation prompt opens the think block
        template = template.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
        assert "<think>" in template
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=1))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))
    (directory / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR, indent=1))
