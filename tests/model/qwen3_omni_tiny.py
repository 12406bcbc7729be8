"""A tiny random Qwen3-Omni (`qwen3_omni_moe`) checkpoint, built with transformers' own classes.

    tiny = build_tiny_qwen3_omni(tmp_path, seed=0)
    tiny.directory   # config.json + model.safetensors (thinker.*, talker.*, code2wav.* keys), and
                     # (with_tokenizer) tokenizer.json, tokenizer_config.json, chat_template.json,
                     # preprocessor_config.json, video_preprocessor_config.json
    tiny.model       # transformers' Qwen3OmniMoeForConditionalGeneration (float32, eval)
    tiny.thinker     # its Qwen3OmniMoeThinkerForConditionalGeneration: the reference

Token ids are tests/model/omni_tiny.py's (TOKENS: media placeholders and markers at 140..146 of
a 160-token vocabulary), spelled as Qwen3-Omni's tokenizer spells them (SPECIAL_TOKENS: the
tokenizer of tests/model/vl_tiny.py with <|audio_pad|>, <|audio_start|>, <|audio_end|>). The chat
template is omnilive's short form of Qwen3-Omni's (backends/native_qwen3_omni.py).

The thinker has 3 MoE decoder layers (the middle one a dense MLP), a 2-block vision tower with
DeepStack after both blocks, and a 2-layer AuT audio encoder with n_window 50 (100 mel frames,
13 tokens per conv chunk: transformers counts audio tokens right for that size only) and
n_window_infer 200 (attention windows of two chunks), so a 2.5 s audio already crosses chunk and
window edges. The talker has 2 MoE
layers (4 experts, 2 per token, a shared expert), a 2-layer code predictor and 4 code groups
(codebook 16, control tokens 40..47, voices "chelsie" 46 and "ethan" 47); Code2Wav has 2
transformer layers with a 4-frame sliding window and upsamples each frame 2 · 2 · 2 = 8 times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnilive.backends.native_qwen3_omni import QWEN3_OMNI_CHAT_TEMPLATE
from tests.model import vl_tiny
from tests.model.omni_tiny import TOKENS, randomize

VOCAB = 160
PATCH = 16
IDS = {
    "audio_token_id": TOKENS["audio_token_index"], "image_token_id": TOKENS["image_token_index"],
    "video_token_id": TOKENS["video_token_index"], "audio_start_token_id": TOKENS["audio_start_token_id"],
    "audio_end_token_id": TOKENS["audio_end_token_id"], "vision_start_token_id": TOKENS["vision_start_token_id"],
    "vision_end_token_id": TOKENS["vision_end_token_id"],
}
TEXT = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
    "decoder_sparse_step": 1, "mlp_only_layers": [1], "norm_topk_prob": True,
    # 8 rotary frequencies interleaved t h w t h w t h
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                        "interleaved": True, "mrope_interleaved": True},
}
VISION = {
    "depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 64,
    "patch_size": PATCH, "temporal_patch_size": 2, "spatial_merge_size": 2, "num_position_embeddings": 16,
    "deepstack_visual_indexes": [0, 1],
}
AUDIO = {
    "num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 48, "d_model": 32,
    "n_window": 50, "n_window_infer": 200, "max_source_positions": 64, "output_dim": 64,
    "downsample_hidden_size": 8, "conv_chunksize": 500,
}
POSITION_ID_PER_SECONDS = 13
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # Qwen's
SPECIAL_TOKENS = {**{t: i for t, i in vl_tiny.SPECIAL_TOKENS.items() if i not in (140, 143, 144)},
                  "<|audio_pad|>": IDS["audio_token_id"], "<|audio_start|>": IDS["audio_start_token_id"],
                  "<|audio_end|>": IDS["audio_end_token_id"]}
PREPROCESSOR = {  # Qwen3-Omni's preprocessor_config.json keys (image and audio parts), tiny sizes
    "min_pixels": 32 * 32, "max_pixels": 96 * 96, "patch_size": PATCH, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "feature_size": 128, "sampling_rate": 16000,
    "hop_length": 160, "n_fft": 400, "chunk_length": 300, "processor_class": "Qwen3OmniMoeProcessor",
    "image_processor_type": "Qwen2VLImageProcessor", "feature_extractor_type": "WhisperFeatureExtractor",
}
VIDEO_PREPROCESSOR = {"min_pixels": 32 * 32, "max_pixels": 64 * 64, "patch_size": PATCH, "temporal_patch_size": 2,
                      "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD}
# the tokenizer's own ids: <|im_start|> / <|im_end|>, the first token of each role's name
# ("user" and "system" take several here, "assistant" one); the tts markers on unused specials
CHAT_IDS = {"im_start_token_id": 153, "im_end_token_id": 154, "system_token_id": 82, "user_token_id": 84,
            "assistant_token_id": 126, "tts_pad_token_id": 147, "tts_bos_token_id": 148, "tts_eos_token_id": 149}
TALKER_TEXT = {
    "vocab_size": 48, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                        "interleaved": True, "mrope_interleaved": True},
}
CODE_PREDICTOR = {"vocab_size": 16, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "num_code_groups": 4}
CODE2WAV = {"codebook_size": 16, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_quantizers": 4, "upsample_rates": [2, 2],
            "upsampling_ratios": [2], "decoder_dim": 16, "sliding_window": 4}


@dataclass
class TinyQwen3Omni:
    directory: Path
    model: torch.nn.Module

    @property
    def thinker(self) -> torch.nn.Module:
        return self.model.thinker


def tiny_qwen3_omni_config():
    from transformers import Qwen3OmniMoeConfig

    thinker = {"text_config": TEXT, "vision_config": VISION, "audio_config": AUDIO,
               "position_id_per_seconds": POSITION_ID_PER_SECONDS, **IDS}
    talker = {"text_config": TALKER_TEXT, "code_predictor_config": CODE_PREDICTOR, "num_code_groups": 4,
              "thinker_hidden_size": 64, "accept_hidden_layer": 1, "codec_eos_token_id": 40, "codec_nothink_id": 41,
              "codec_think_bos_id": 42, "codec_think_eos_id": 43, "codec_pad_id": 44, "codec_bos_id": 45,
              "speaker_id": {"chelsie": 46, "ethan": 47}, "position_id_per_seconds": POSITION_ID_PER_SECONDS,
              "audio_token_id": IDS["audio_token_id"], "image_token_id": IDS["image_token_id"],
              "video_token_id": IDS["video_token_id"], "vision_start_token_id": IDS["vision_start_token_id"],
              "audio_start_token_id": IDS["audio_start_token_id"], "spatial_merge_size": 2}
    return Qwen3OmniMoeConfig(thinker_config=thinker, talker_config=talker, code2wav_config=CODE2WAV,
                              **CHAT_IDS)


def build_tiny_qwen3_omni(directory: str | Path, seed: int = 0, with_tokenizer: bool = False) -> TinyQwen3Omni:
    from transformers import Qwen3OmniMoeForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    torch.manual_seed(seed)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = Qwen3OmniMoeForConditionalGeneration(tiny_qwen3_omni_config()).float().eval()
        randomize(model, seed)
        with torch.no_grad():  # at randomize's scale the talker's text inputs are nearly all bias
            for linear in (model.talker.text_projection.linear_fc1, model.talker.text_projection.linear_fc2):
                linear.weight.mul_(6.0)
            # codec EOS rarely the best code, so that a talker speaks for a while
            model.talker.codec_head.weight[model.config.talker_config.codec_eos_token_id].mul_(0.2)
        model.save_pretrained(directory)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if with_tokenizer:
        write_tokenizer(directory)
    return TinyQwen3Omni(directory, model)


def write_tokenizer(directory: Path) -> None:
    """The tokenizer and processor files a Qwen3-Omni checkpoint ships."""
    vl_tiny.build_vl_tokenizer(SPECIAL_TOKENS).save(str(directory / "tokenizer.json"))
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for t, i in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "model_max_length": 2048, "added_tokens_decoder": added}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_OMNI_CHAT_TEMPLATE}, indent=1))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))
    (directory / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR, indent=1))


def with_louder_experts(directory: Path, out: Path, factor: float = 8.0) -> Path:
    """`out`: a copy of a tiny checkpoint (config and weights) with every MoE expert weight
    (thinker's and talker's, not the shared experts) times `factor`. At the random weights' scale
    the experts barely move the logits (dropping them all costs a KL of ~5e-7), so a test of
    what quantising them costs could not fail; times 8 they decide about two thirds of the
    thinker's greedy tokens."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((directory / "config.json").read_text())
    tensors = load_file(directory / "model.safetensors")
    save_file({key: t * factor if ".mlp.experts." in key else t for key, t in tensors.items()},
              out / "model.safetensors")
    return out
