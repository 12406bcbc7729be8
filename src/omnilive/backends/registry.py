"""The model families omnilive serves natively: config.json `model_type` → its loader.

A loader takes (checkpoint directory, dtype, device) and returns an OmniModel: the decoder
(any model.qwen2.Qwen2ForCausalLM), its tokenizer and prompt builder (processor), and a talker,
token2wav and voices when the family speaks. Adding a family = a model file in model/, a
prompt builder in backends/, and a line here (docs/architecture.md lists what each must give).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from omnilive.backends.native_prompt import OmniPrompt
from omnilive.model.qwen2 import Qwen2ForCausalLM
from omnilive.model.qwen3_omni_code2wav import Qwen3OmniCode2Wav
from omnilive.model.qwen3_omni_talker import Qwen3OmniTalker, Qwen3Voice
from omnilive.model.talker import Talker
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.tokenizer import Tokenizer
from omnilive.types import EngineError, Message, Tool


class PromptBuilder(Protocol):
    """A family's processor: messages → token ids with expanded placeholders and media inputs."""

    @property
    def input_modalities(self) -> tuple[str, ...]: ...

    def build(self, messages: Sequence[Message], speak: bool = False,
              template_kwargs: Mapping[str, Any] | None = None, tools: Sequence[Tool] = ()) -> OmniPrompt: ...


@dataclass
class OmniModel:
    """A loaded checkpoint, what a family loader returns: Qwen2.5-Omni; Qwen2.5-VL, Qwen2-VL,
    Qwen3-VL or Qwen3 (no talker)."""

    thinker: Qwen2ForCausalLM  # the decoder: an Omni thinker, a Qwen2.5-VL model, a Qwen3
    tokenizer: Tokenizer
    processor: PromptBuilder
    talker: Talker | Qwen3OmniTalker | None = None  # None: the checkpoint cannot speak
    token2wav: Token2Wav | Qwen3OmniCode2Wav | None = None  # Qwen3-Omni: its Code2Wav
    voices: dict[str, Voice | Qwen3Voice] = field(default_factory=dict)
    family: str = "Qwen2.5-Omni"  # what the model card calls it
    answer_phrase: str | None = None  # a plain-text reasoner's (QVQ's "**Final Answer**"); None: none


Loader = Callable[..., OmniModel]  # (directory, dtype, device); INT8_EXPERT_FAMILIES' also int8_experts=


def _qwen2_5_omni(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_omni import load_qwen2_5_omni

    return load_qwen2_5_omni(directory, dtype, device)


def _qwen2_5_vl(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_vl import load_vl

    return load_vl(directory, dtype, device)


def _qwen2_vl(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_vl import load_qwen2_vl_family

    return load_qwen2_vl_family(directory, dtype, device)


def _qwen3_vl(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_vl import load_qwen3_vl_family

    return load_qwen3_vl_family(directory, dtype, device)


def _qwen3_omni(directory: Path, dtype: torch.dtype, device: str, int8_experts: bool = False) -> OmniModel:
    from omnilive.backends.native_qwen3_omni import load_qwen3_omni_family

    return load_qwen3_omni_family(directory, dtype, device, int8_experts=int8_experts)


def _qwen3(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_text import load_qwen3

    return load_qwen3(directory, dtype, device)


FAMILIES: dict[str, Loader] = {
    "qwen2_5_omni": _qwen2_5_omni,  # text, images, audio, video in; text and speech out
    "qwen2_5_vl": _qwen2_5_vl,  # text, images, video in; text out
    "qwen2_vl": _qwen2_vl,  # the same (Qwen2-VL, QVQ)
    "qwen3_vl": _qwen3_vl,  # text, images, video in; text out; the Thinking variants think
    "qwen3_vl_moe": _qwen3_vl,  # the same, with sparse expert MLPs
    "qwen3_omni_moe": _qwen3_omni,  # text, images, audio, video in; text and speech out
    "qwen3": _qwen3,  # text in, text out; thinks
    "qwen3_moe": _qwen3,  # the same, with sparse expert MLPs
}


# families whose loader takes int8_experts=True (OMNILIVE_QUANTIZE=int8: MoE experts in int8)
INT8_EXPERT_FAMILIES = frozenset({"qwen3_omni_moe"})


def loader_for(model_type: str | None, directory: Path) -> Loader:
    """The loader of a checkpoint's model_type; a clear error for a family not served."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise EngineError(f"{directory}: config.json model_type {model_type!r} is not served; omnilive serves "
                      f"{', '.join(sorted(FAMILIES))} checkpoints (docs/models.md)", param="model")
