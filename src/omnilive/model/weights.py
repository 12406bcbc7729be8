"""Loading weights into our modules: every checkpoint key consumed, every shape checked.

Also picks the compute dtype for the machine we run on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class WeightsMismatchError(ValueError):
    """The checkpoint does not fit the module: the message names every offending key."""


def expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers a checkpoint must provide, by name.

    A tied weight (lm_head sharing embed_tokens) is listed once, under its first name.
    """
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())  # drops tied duplicates
    tensors.update(model.named_buffers())
    persistent = set(model.state_dict().keys())
    return {name: t for name, t in tensors.items() if name in persistent}


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """Copy `state_dict` into `model` (cast to each parameter's dtype), refusing any mismatch.

    assign=True makes the checkpoint tensors (cast where needed) the model's parameters
    instead of copying them: no second copy of the weights in memory.
    """
    expected = expected_tensors(model)
    tied_aliases = set(model.state_dict().keys()) - set(expected)
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected) - tied_aliases)
    misshaped = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)} vs model {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state_dict and state_dict[name].shape != t.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected keys: {', '.join(extra)}")
    if misshaped:
        problems.append(f"shape mismatch: {'; '.join(misshaped)}")
    if problems:
        raise WeightsMismatchError(f"cannot load weights into {type(model).__name__}: " + " | ".join(problems))
    if assign:
        model.load_state_dict({name: state_dict[name].to(t.dtype) for name, t in expected.items()}, strict=False, assign=True)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # assign replaced the embedding's tensor, not lm_head's
        return
    with torch.no_grad():
        for name, t in expected.items():
            t.copy_(state_dict[name])


def load_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint directory (model.safetensors or its shards)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def load_pretrained(directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu"):
    """A Qwen2ForCausalLM from a HF directory (config.json + safetensors)."""
    from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    config = Qwen2Config.from_dict(json.loads((directory / "config.json").read_text()))
    model = empty_model(Qwen2ForCausalLM, config, resolve_dtype(dtype), device)
    load_state_dict_strict(model, load_safetensors_dir(directory))
    return model


def empty_model(cls, config, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """`cls(config)` with uninitialised weights (skips the random init) in eval mode."""
    with torch.device("meta"):
        model = cls(config)
    model = model.to(dtype).to_empty(device=device).eval()
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty gives each module its own new tensor
    return model


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """None or "auto" → `pick_dtype()`; "bfloat16"/"bf16"/"float32"/... → torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return pick_dtype()
    aliases = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    result = getattr(torch, name, None)
    if isinstance(result, torch.dtype):
        return result
    raise ValueError(f"unknown dtype {dtype!r}")


@functools.cache
def pick_dtype(device: str = "cpu") -> torch.dtype:
    """bfloat16 where the hardware computes it natively, float32 elsewhere.

    On CPU bf16 halves the bytes each decode step reads, but without avx512_bf16 / AMX the
    matmuls emulate it and run slower than float32.
    """
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


@functools.cache
def pick_compute_dtype(device: str = "cpu") -> torch.dtype:
    """The dtype for compute-bound work (the token2wav DiT's many-row matmuls): bfloat16 on GPUs
    and on CPUs with AMX; float32 on other CPUs, where avx512_bf16 speeds up reading weights
    (decode) but its matmuls of ~100+ rows run 1.4-1.8x slower than float32 (measured on a
    2-core Xeon without AMX: 896x4864 linear at 400 rows, 12.3 ms float32 vs 20.7 ms bf16)."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # the capability check: ATEN_CPU_CAPABILITY=avx2 (with ONEDNN_MAX_CPU_ISA=AVX2) runs an AMX
    # CPU as an AVX2 one, where oneDNN emulates bf16 (a 500-token prompt 3x slower than float32)
    return torch.bfloat16 if "amx_bf16" in _cpu_flags() and _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()
