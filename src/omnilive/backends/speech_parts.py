"""What a speech replica (`--stages`, server/scale_out_stages.py) loads of an Omni checkpoint: the
talker and its vocoder, and of the thinker only its token embeddings (the talker embeds its own
control tokens with them) and its context length. The thinker's decoder and media encoders are
never read: Qwen3-Omni-30B-A3B's thinker holds 30B parameters, its token embeddings 0.3B.

    Qwen2.5-Omni   talker + token2wav          (a talker config, audio output on, spk_dict.pt)
    Qwen3-Omni     talker (with its code       (audio output on, a talker with voices)
                   predictor) + Code2Wav
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omnilive.model.omni_checkpoint import THINKER_PREFIX, load_prefixed_tensors, read_config
from omnilive.model.qwen3_omni import Qwen3OmniThinkerConfig
from omnilive.model.qwen3_omni_code2wav import Qwen3OmniCode2Wav, load_qwen3_omni_code2wav
from omnilive.model.qwen3_omni_talker import Qwen3OmniTalker, load_qwen3_omni_talker
from omnilive.model.talker import Talker, load_talker
from omnilive.model.thinker import ThinkerConfig
from omnilive.model.token2wav import Token2Wav, load_token2wav
from omnilive.types import EngineError

THINKER_EMBED_PREFIX = f"{THINKER_PREFIX}model.embed_tokens."


def qwen2_5_omni_speaks(directory: Path, config: dict) -> bool:
    return ("talker_config" in config and config.get("enable_audio_output", True)
            and (directory / "spk_dict.pt").exists())


def qwen3_omni_speaks(config: dict) -> bool:
    return bool(config.get("enable_audio_output", True) and (config.get("talker_config") or {}).get("speaker_id"))


@dataclass(frozen=True)
class SpeakingParts:
    talker: Talker | Qwen3OmniTalker
    vocoder: Token2Wav | Qwen3OmniCode2Wav  # Qwen3-Omni: Code2Wav, float32 (as the whole model loads it)
    thinker_embed: torch.nn.Embedding  # the thinker's token embeddings, in the thinker's dtype
    thinker_dtype: torch.dtype
    context_length: int  # the thinker's most positions


def load_speaking_parts(directory: Path, dtype: torch.dtype, device: str) -> SpeakingParts:
    """The talker, vocoder and thinker token embeddings of a checkpoint that speaks; EngineError
    for one that cannot."""
    config = read_config(directory)
    model_type = config.get("model_type")
    if model_type == "qwen2_5_omni" and qwen2_5_omni_speaks(directory, config):
        text = ThinkerConfig.from_dict(config).text_config
        talker, (vocoder, _) = load_talker(directory, dtype, device), load_token2wav(directory, device)
    elif model_type == "qwen3_omni_moe" and qwen3_omni_speaks(config):
        text = Qwen3OmniThinkerConfig.from_dict(config).text_config
        talker = load_qwen3_omni_talker(directory, dtype, device)
        vocoder = load_qwen3_omni_code2wav(directory, torch.float32, device)
    else:
        raise EngineError(f"{directory} has no talker: it cannot run a speech stage", param="model")
    weight = load_prefixed_tensors(directory, THINKER_EMBED_PREFIX)["weight"]
    embed = torch.nn.Embedding.from_pretrained(weight.to(device=device, dtype=dtype), freeze=True)
    return SpeakingParts(talker, vocoder, embed, dtype, text.max_position_embeddings)
