"""The model families omnilive serves natively: config.json `model_type` → its loader.

A loader takes (checkpoint directory, dtype, device) and returns an OmniModel: the decoder
(any model.qwen2.Qwen2ForCausalLM), its tokenizer and prompt builder (processor), and a talker,
token2wav and voices when the family speaks. Adding a family = a model file in model/, a
prompt builder in backends/, and a line here (docs/architecture.md lists what each must give).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from omnilive.backends.native_speech import OmniModel
from omnilive.types import EngineError

Loader = Callable[[Path, torch.dtype, str], OmniModel]


def _qwen2_5_omni(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_omni import load_qwen2_5_omni

    return load_qwen2_5_omni(directory, dtype, device)


def _qwen2_5_vl(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    from omnilive.backends.native_vl import load_vl

    return load_vl(directory, dtype, device)


FAMILIES: dict[str, Loader] = {
    "qwen2_5_omni": _qwen2_5_omni,  # text, images, audio, video in; text and speech out
    "qwen2_5_vl": _qwen2_5_vl,  # text, images, video in; text out
}


def loader_for(model_type: str | None, directory: Path) -> Loader:
    """The loader of a checkpoint's model_type; a clear error for a family not served."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise EngineError(f"{directory}: config.json model_type {model_type!r} is not served; omnilive serves "
                      f"{', '.join(sorted(FAMILIES))} checkpoints (docs/models.md)", param="model")
