"""A tiny random Qwen2.5-Omni checkpoint, built with transformers' own classes, for tests.

    from tests.model.omni_tiny import build_tiny_omni, TOKENS
    tiny = build_tiny_omni(tmp_path)          # thinker + talker + token2wav, float32, eval
    tiny.directory                            # config.json, sharded safetensors + index, spk_dict.pt
    tiny.model                                # the transformers Qwen2_5OmniForConditionalGeneration
    tiny.model.thinker / .talker / .token2wav # the references to compare against

Every weight is random and well scaled (norm weights near 1, non-zero biases), so a
swapped or missing tensor shows up in the outputs. Special token ids sit at the top of the
tiny vocabulary (TOKENS); the talker's text ids point into the thinker's vocabulary. The
directory also holds a tiny trained tokenizer (tokenizer.json; tokenizer_config.json with
Qwen2.5-Omni's chat template) and preprocessor configs, so an engine can serve it; tests that
build token ids themselves ignore them. Building takes about a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from omnilive.backends.native_prompt import FALLBACK_CHAT_TEMPLATE

THINKER_VOCAB = 160
TOKENS = {
    "audio_token_index": 140,
    "image_token_index": 141,
    "video_token_index": 142,
    "audio_start_token_id": 143,
    "audio_end_token_id": 144,
    "vision_start_token_id": 145,
    "vision_end_token_id": 146,
}
TALKER_TEXT_TOKENS = {"tts_text_pad_token_id": 147, "tts_text_start_token_id": 148, "tts_text_end_token_id": 149}
CODEC_VOCAB = 24
CODEC_TOKENS = {"tts_codec_pad_token_id": 19, "tts_codec_start_token_id": 20, "tts_codec_end_token_id": 21,
                "tts_codec_mask_token_id": 23}
VOICE_BOS_TOKENS = {"Chelsie": 150, "Ethan": 151}

TEXT = {
    "vocab_size": THINKER_VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
    # head_dim 16: 8 rotary frequencies, 2 for time, 3 for height, 3 for width
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}
VISION = {
    "depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "patch_size": 14, "temporal_patch_size": 2,
    "spatial_merge_size": 2, "window_size": 56, "out_hidden_size": 64, "fullatt_block_indexes": [1],
}
AUDIO = {
    "num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 48, "d_model": 32,
    "n_window": 8, "max_source_positions": 128, "output_dim": 64,
}
TALKER = dict(
    vocab_size=CODEC_VOCAB, embedding_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=1024,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
    spatial_merge_size=2, **TOKENS, **TALKER_TEXT_TOKENS, **CODEC_TOKENS,
)
DIT = {
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "head_dim": 16, "ff_mult": 2, "emb_dim": 16,
    "block_size": 4, "look_ahead_layers": [1], "look_backward_layers": [0, 3], "repeats": 2, "num_embeds": 20, "mel_dim": 8,
    "enc_emb_dim": 12, "enc_dim": 8, "enc_channels": [8, 8, 8, 8, 24], "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 8, "enc_res2net_scale": 2, "enc_se_channels": 4,
    "max_position_embeddings": 256,
}
BIGVGAN = {
    "mel_dim": 8, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]], "upsample_rates": [5, 3, 2], "upsample_kernel_sizes": [11, 7, 4],
}


@dataclass
class TinyOmni:
    directory: Path
    model: torch.nn.Module  # transformers Qwen2_5OmniForConditionalGeneration, float32, eval

    @property
    def thinker(self) -> torch.nn.Module:
        return self.model.thinker


def tiny_omni_config(with_talker: bool = True):
    from transformers import Qwen2_5OmniConfig

    thinker = dict(text_config=TEXT, vision_config=VISION, audio_config=AUDIO, **TOKENS)
    extra = {}
    if with_talker:
        extra = {"talker_config": TALKER, "token2wav_config": {"dit_config": DIT, "bigvgan_config": BIGVGAN}}
    return Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=with_talker, **extra)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Well-scaled random values in every parameter (defaults leave biases 0, norms 1 and
    Snake α/β 0, which would hide mix-ups)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith((".alpha", ".beta")):  # Snake α/β are logarithms
                p.copy_(noise * 0.5)
            elif p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:  # gain 0.8 keeps the tiny vocoder inside its ±1 clamp
                p.copy_(noise * 0.8 / p[0].numel() ** 0.5)


def write_voices(directory: Path, seed: int) -> None:
    """spk_dict.pt as the real checkpoint has it: per voice an x-vector, a reference mel and
    the talker's text-BOS token."""
    generator = torch.Generator().manual_seed(seed)
    voices = {
        name: {
            "cond": torch.randn(1, DIT["enc_emb_dim"], generator=generator),
            "ref_mel": torch.randn(1, 30, DIT["mel_dim"], generator=generator),
            "bos_token": bos,
        }
        for name, bos in VOICE_BOS_TOKENS.items()
    }
    torch.save(voices, directory / "spk_dict.pt")


def build_tiny_omni(directory: str | Path, seed: int = 0, with_talker: bool = True) -> TinyOmni:
    """Build, randomize and save_pretrained a tiny Qwen2.5-Omni into `directory` (sharded,
    with an index, like the hub checkpoints), plus spk_dict.pt when it has a talker."""
    from transformers import Qwen2_5OmniForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    directory = Path(directory)
    torch.manual_seed(seed)
    verbosity = transformers_logging.get_verbosity()
    # tiny vocabularies trip transformers' token-id range warnings (on build and on save)
    transformers_logging.set_verbosity_error()
    try:
        model = Qwen2_5OmniForConditionalGeneration(tiny_omni_config(with_talker)).float().eval()
        randomize(model, seed)
        model.save_pretrained(directory, max_shard_size="100KB")
    finally:
        transformers_logging.set_verbosity(verbosity)
    if with_talker:
        write_voices(directory, seed)
    write_tokenizer(directory)
    return TinyOmni(directory, model)


# The tokenizer: every Qwen2.5-Omni added token, the media ones at TOKENS' ids, the rest at the
# top of the vocabulary; the talker's text ids and the voices' BOS ids have no text (as in the
# real checkpoint, where they lie past the tokenizer's vocabulary) and get reserved names here
# so that every id the tiny thinker can generate decodes.
SPECIAL_TOKENS = {
    "<|AUDIO|>": TOKENS["audio_token_index"],
    "<|IMAGE|>": TOKENS["image_token_index"],
    "<|VIDEO|>": TOKENS["video_token_index"],
    "<|audio_bos|>": TOKENS["audio_start_token_id"],
    "<|audio_eos|>": TOKENS["audio_end_token_id"],
    "<|vision_bos|>": TOKENS["vision_start_token_id"],
    "<|vision_eos|>": TOKENS["vision_end_token_id"],
    **{f"<|reserved_{i}|>": i for i in (*TALKER_TEXT_TOKENS.values(), *VOICE_BOS_TOKENS.values())},
    "<|endoftext|>": 152, "<|im_start|>": 153, "<|im_end|>": 154, "<|box_end|>": 155, "<|quad_start|>": 156,
    "<|quad_end|>": 157, "<|vision_pad|>": 158, "<tool_call>": 159, "</tool_call>": 133, "<|fim_prefix|>": 134,
    "<|fim_middle|>": 135, "<|fim_suffix|>": 136, "<|fim_pad|>": 137, "<|repo_name|>": 138, "<|file_sep|>": 139,
}
BPE_VOCAB = min(SPECIAL_TOKENS.values())  # learned tokens take ids 0..132

# Qwen2.5-Omni's chat template (its processor's chat_template.json); the native processor
# keeps the same text as its fallback for checkpoints that lack one
CHAT_TEMPLATE = FALLBACK_CHAT_TEMPLATE
TOKENIZER_CORPUS = [
    ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
     "auditory and visual inputs, as well as generating text and speech."),
    "You are a helpful assistant. What is in this picture? Describe the image, the audio and the video.",
    "system\nuser\nassistant\nThe quick brown fox jumps over the lazy dog. Say hello in one short sentence!",
]
# small image sides: a test image becomes a few merge units (28 x 28 pixels each)
PREPROCESSOR = {
    "processor_class": "Qwen2_5OmniProcessor", "image_processor_type": "Qwen2VLImageProcessor",
    "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
    "hop_length": 160, "n_fft": 400, "chunk_length": 300, "min_pixels": 28 * 28, "max_pixels": 112 * 112,
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}
VIDEO_PREPROCESSOR = {"min_pixels": 28 * 28, "max_pixels": 56 * 84, "temporal_patch_size": 2, "merge_size": 2,
                      "patch_size": 14}


def build_tiny_tokenizer():
    """A byte-level BPE trained on a few sentences (all printable ASCII in its alphabet), with
    every special token at its SPECIAL_TOKENS id: a `tokenizers.Tokenizer` of THINKER_VOCAB ids."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # GPT-2's byte → character map: printable ASCII stands for itself, bytes 0..32 are U+0100 + byte
    ascii_alphabet = [chr(c) for c in range(33, 127)] + [chr(256 + c) for c in (ord(" "), ord("\n"))]
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=ascii_alphabet, show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = byte_level
    learner.train_from_iterator(TOKENIZER_CORPUS, trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {**learned["vocab"], **SPECIAL_TOKENS}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    # added tokens already in the model's vocabulary keep their ids there
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def write_tokenizer(directory: str | Path) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template) and the preprocessor configs,
    as a Qwen2.5-Omni checkpoint ships them."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for t, i in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])}
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 1024, "added_tokens_decoder": added,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))
    (directory / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR, indent=1))
