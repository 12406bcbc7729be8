"""A tiny random Qwen3-Omni (`qwen3_omni_moe`) checkpoint, built with transformers' own classes.

    tiny = build_tiny_qwen3_omni(tmp_path, seed=0)
    tiny.directory   # config.json + model.safetensors (thinker.*, talker.*, code2wav.* keys)
    tiny.model       # transformers' Qwen3OmniMoeForConditionalGeneration (float32, eval)
    tiny.thinker     # its Qwen3OmniMoeThinkerForConditionalGeneration: the reference

Token ids are tests/model/omni_tiny.py's (TOKENS: media placeholders and markers at 140..146 of
a 160-token vocabulary). The thinker has 3 MoE decoder layers (the middle one a dense MLP), a
2-block vision tower with DeepStack after both blocks, and a 2-layer AuT audio encoder with
n_window 50 (100 mel frames, 13 tokens per conv chunk: transformers counts tokens for that size only) and n_window_infer 200 (attention windows of two
chunks), so a short audio already crosses chunk and window edges. The talker and Code2Wav are
the smallest transformers accepts: their keys are in the checkpoint, as in a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

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
TALKER_TEXT = {
    "vocab_size": 48, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 16, "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                        "interleaved": True, "mrope_interleaved": True},
}
CODE_PREDICTOR = {"vocab_size": 16, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "num_code_groups": 4}
CODE2WAV = {"codebook_size": 16, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
            "intermediate_size": 48, "num_hidden_layers": 1, "num_quantizers": 4, "upsample_rates": [2, 2],
            "upsampling_ratios": [2], "decoder_dim": 16, "sliding_window": 8}


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
                              im_start_token_id=150, im_end_token_id=151, tts_pad_token_id=152,
                              tts_bos_token_id=153, tts_eos_token_id=154, system_token_id=155,
                              user_token_id=156, assistant_token_id=157)


def build_tiny_qwen3_omni(directory: str | Path, seed: int = 0) -> TinyQwen3Omni:
    from transformers import Qwen3OmniMoeForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    torch.manual_seed(seed)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = Qwen3OmniMoeForConditionalGeneration(tiny_qwen3_omni_config()).float().eval()
        randomize(model, seed)
        model.save_pretrained(directory)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return TinyQwen3Omni(directory, model)
