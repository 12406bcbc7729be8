"""Load a llama.cpp GGUF file (qwen2 or llama architecture) into our Qwen2ForCausalLM.

The quantised tensors are dequantised with the `gguf` package, renamed to HF checkpoint keys
and loaded strictly. With `quantized=True` the linear layers keep the GGUF's quantised values
instead (model/quant_formats.py, exact) and run on our CPU kernel (model/quant_linear.py); the
embedding table and norms are float32. Converting takes a minute on a small CPU, so the result
(weights as safetensors, config.json and the tokenizer) is cached in
`cache_dir/<file>-<size>-<mtime>/`; the next load reads only that and takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from omnilive.model.layers import quantize_linears_int8
from omnilive.model.packed import pack_decoder
from omnilive.model.quant_formats import convertible, from_gguf
from omnilive.model.quant_linear import (
    add_float_copies,
    dequantized_weight,
    fuse_projections,
    prompt_calls,
    use_compiled_glue,
    use_quant_linears,
)
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.tokenizer import Tokenizer
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("qwen2", "llama")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
    """llama.cpp tensor name → HF checkpoint key ("blk.3.attn_q.bias" → "model.layers.3.self_attn.q_proj.bias")."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        raise KeyError(f"GGUF tensor {gguf_name!r} has no counterpart in our model")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"


def read_metadata(reader) -> dict[str, Any]:
    """All GGUF key/value metadata as python values."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str]) -> Qwen2Config:
    arch = meta["general.architecture"]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NotImplementedError(f"GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    return Qwen2Config(
        vocab_size=get("vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=get("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv", heads),
        max_position_embeddings=get("context_length"),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensor_names,  # SmolLM2 reuses token_embd
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        attention_output_bias="blk.0.attn_output.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names,
        head_dim=get("attention.key_length") or hidden // heads,
        model_type=arch,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's llama converter, which reorders each head's q/k rows from the HF
    half-split rotary layout to interleaved pairs (qwen2 files are not permuted)."""
    shape = weight.shape
    return weight.reshape(num_heads, shape[0] // num_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def dequantized_state_dict(reader, config: Qwen2Config, dtype: torch.dtype, quantized: bool = False) -> dict[str, torch.Tensor]:
    """HF key → tensor. quantized=True: each linear weight the kernel reads stays quantised, as
    `<linear>.weight_blocks` (uint8) with its format id in `<linear>.weight_format`."""
    from gguf.quants import dequantize

    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        in_features = int(tensor.shape[0])
        if quantized and _is_linear(name) and len(tensor.shape) == 2 and convertible(tensor.tensor_type, in_features):
            rows, format_id = from_gguf(tensor.data, tensor.tensor_type, int(tensor.shape[1]))
            linear = name.removesuffix(".weight")
            state[f"{linear}.weight_blocks"] = torch.from_numpy(_unpermuted(rows, tensor.name, config).copy())
            state[f"{linear}.weight_format"] = torch.tensor([format_id])
            continue
        weight = _unpermuted(dequantize(tensor.data, tensor.tensor_type), tensor.name, config)  # float32 [out, in]
        if not (weight.flags.writeable and weight.flags.c_contiguous):  # F32 tensors are views of the file
            weight = np.array(weight, order="C")
        state[name] = torch.from_numpy(weight).to(dtype)
    return state


def _is_linear(name: str) -> bool:
    return name.endswith("_proj.weight") or name == "lm_head.weight"


def _unpermuted(weight: np.ndarray, gguf_name: str, config: Qwen2Config) -> np.ndarray:
    """Rows of a llama q/k weight back in HF order (whole rows move: float or quantised blocks)."""
    if config.model_type == "llama" and re.search(r"\.attn_[qk]\.", gguf_name):
        heads = config.num_attention_heads if ".attn_q." in gguf_name else config.num_key_value_heads
        return unpermute_rotary(weight, heads)
    return weight


def load_gguf(
    path: str | Path,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: str = "cpu",
    int8_weights: bool = False,
    pack_weights: bool = True,
    quantized: bool = False,
    prompt_dtype: torch.dtype | None = None,
) -> tuple[Qwen2ForCausalLM, Qwen2Config, Tokenizer]:
    """(model in eval mode, its config, its tokenizer) from a GGUF file.

    dtype None/"auto" picks bf16 where the CPU computes it natively, else float32. With a
    cache_dir, the dequantised weights are stored there once and reused. int8_weights
    (bf16/fp16 on CPU only) stores the linear layers as int8: about twice the decode speed.
    pack_weights=False keeps bf16 linears as plain nn.Linear (e.g. to hand them to another
    library); by default they are packed for oneDNN where the CPU supports it (model/packed.py).
    quantized=True (CPU, needs `quant_linear.kernels()`) keeps the GGUF's quantised linear
    weights and computes in float32 whatever dtype says; with a prompt_dtype its decoder layers
    also hold the same values in that dtype, on which prompt tokens run (quant_linear.FloatCopy).
    """
    path = Path(path)
    dtype = torch.float32 if quantized else resolve_dtype(dtype)
    if cache_dir is None:
        state, config, tokenizer = _read_gguf(path, dtype, quantized)
    else:
        state, config, tokenizer = _cached(path, Path(cache_dir), dtype, quantized)
    model = empty_model(Qwen2ForCausalLM, config, dtype, device)
    if quantized:
        formats = {key.removesuffix(".weight_format"): int(state.pop(key)) for key in list(state)
                   if key.endswith(".weight_format")}
        use_quant_linears(model, formats, state)
        load_state_dict_strict(model, state, assign=True)
        fuse_projections(model)  # after loading: the fused calls hold the loaded tensors
        use_compiled_glue(model)
        if prompt_dtype is not None:
            started = time.perf_counter()
            copies = _float_copies(model, prompt_dtype, None if cache_dir is None else cache_entry(path, Path(cache_dir)))
            nbytes = add_float_copies(model, copies)
            log.info("float copies for prompts: %.2f GB %s in %.1f s", nbytes / 1e9, str(prompt_dtype).removeprefix("torch."),
                     time.perf_counter() - started)
        return model, config, tokenizer
    load_state_dict_strict(model, state, assign=device == "cpu")
    if device != "cpu":
        model.to(device)
    if int8_weights:
        quantize_linears_int8(model)
    elif pack_weights:
        pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model, config, tokenizer


def _float_copies(model: Qwen2ForCausalLM, dtype: torch.dtype, entry: Path | None) -> dict[str, torch.Tensor]:
    """The decoder's quantised calls dequantised into `dtype` (quant_linear.prompt_calls), made
    once and kept in the cache entry when there is one."""
    weights = None if entry is None else entry / f"prompt-copies-{str(dtype).removeprefix('torch.')}.safetensors"
    calls = prompt_calls(model)
    if weights is not None and weights.is_file():
        copies = load_file(weights)
        if set(copies) == set(calls):
            return copies
        log.warning("%s does not match this model's layers: made again", weights)  # written by another version
    copies = {name: dequantized_weight(call, dtype) for name, call in calls.items()}
    if weights is not None:
        with FileLock(str(entry / ".lock")):
            tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
            save_file(copies, str(tmp))
            os.replace(tmp, weights)
    return copies


def _read_gguf(path: Path, dtype: torch.dtype, quantized: bool = False) -> tuple[dict[str, torch.Tensor], Qwen2Config, Tokenizer]:
    from gguf import GGUFReader

    started = time.perf_counter()
    reader = GGUFReader(str(path))
    meta = read_metadata(reader)
    config = config_from_metadata(meta, {t.name for t in reader.tensors})
    tokenizer = Tokenizer.from_gguf_fields(meta)
    state = dequantized_state_dict(reader, config, dtype, quantized)
    log.info("converted %s in %.1f s", path.name, time.perf_counter() - started)
    return state, config, tokenizer


def cache_entry(path: Path, cache_dir: Path) -> Path:
    """Where a GGUF file's converted form lives; a changed file (size or mtime) gets a new one."""
    stat = path.stat()
    return cache_dir / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def _cached(path: Path, cache_dir: Path, dtype: torch.dtype, quantized: bool = False) -> tuple[dict[str, torch.Tensor], Qwen2Config, Tokenizer]:
    entry = cache_entry(path, cache_dir)
    weights = entry / ("model-quantized.safetensors" if quantized else f"model-{str(dtype).removeprefix('torch.')}.safetensors")
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry / ".lock")):  # two processes starting at once convert once
        if weights.is_file():
            config = Qwen2Config.from_dict(json.loads((entry / "config.json").read_text()))
            return load_file(weights), config, Tokenizer.load(entry)
        state, config, tokenizer = _read_gguf(path, dtype, quantized)
        (entry / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        tokenizer.save(entry)
        tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
        save_file(state, str(tmp), metadata={"source": path.name})
        os.replace(tmp, weights)  # the weights file appears last: its presence marks a complete entry
        return state, config, tokenizer
