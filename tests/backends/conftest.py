"""The tiny random Qwen2.5-Omni checkpoint (float32) that the native-engine tests share."""

from __future__ import annotations

import pytest
import torch

from tests.backends.native_engine import Runner

TOKEN2WAV_STEPS = 3  # token2wav ODE steps: enough to chain windows, cheap on the tiny DiT


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    pytest.importorskip("transformers")
    from omnilive.backends.native_omni import load_omni
    from tests.model.omni_tiny import build_tiny_omni

    torch.set_num_threads(1)
    tiny = build_tiny_omni(tmp_path_factory.mktemp("omni"), seed=1)
    return load_omni(tiny.directory, "float32")


@pytest.fixture(scope="module")
def runner(model):
    return Runner(model, context_length=512, prefill_chunk_tokens=64, token2wav_steps=TOKEN2WAV_STEPS)
