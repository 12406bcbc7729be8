"""Loading a Hugging Face Qwen2.5-Omni checkpoint directory (or hub id) into our modules.

The directory holds config.json (`thinker_config`, `talker_config`, `token2wav_config`),
safetensors shards with a model.safetensors.index.json (or one model.safetensors), spk_dict.pt
and the tokenizer files. Tensor keys are prefixed by part: `thinker.`, `talker.`, `token2wav.`.
Each part loads only the shards that hold its keys, and every one of its keys must fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from omnilive.model.audio import sinusoid_positions
from omnilive.model.thinker import OmniThinker, ThinkerConfig
from omnilive.model.vision import rebuild_rotary
from omnilive.model.packed import pack_decoder
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

THINKER_PREFIX = "thinker."
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# what a checkpoint download needs: configs, weights, voices, tokenizer; not the repo's extras
HUB_PATTERNS = ["*.json", "*.safetensors", "spk_dict.pt", "merges.txt", "vocab.json", "*.model", "*.jinja"]


def resolve_checkpoint_dir(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a hub repo id, downloaded (or found in the
    hub cache) with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(f"{name_or_path} is neither a checkpoint directory nor a hub repo id")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=HUB_PATTERNS))


def read_config(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())


def shard_files(directory: str | Path, prefix: str) -> list[Path]:
    """The safetensors files holding keys that start with `prefix`."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted({f for key, f in weight_map.items() if key.startswith(prefix)})]
    single = directory / SINGLE_FILE
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {directory}")


def load_prefixed_tensors(directory: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with `prefix`, keyed without it (read from the shards
    that hold them; other parts' tensors are never read)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in shard_files(directory, prefix):
        with safe_open(file, framework="pt") as shard:
            for key in shard.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if key.startswith(prefix):
                    tensors[key[len(prefix):]] = shard.get_tensor(key)
    if not tensors:
        raise ValueError(f"the checkpoint in {directory} has no tensors under {prefix!r}")
    return tensors


def load_thinker(
    directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu"
) -> OmniThinker:
    """The thinker of a Qwen2.5-Omni checkpoint, in eval mode.

    dtype None / "auto" picks bf16 where the CPU computes it natively, else float32.
    Raises WeightsMismatchError naming every missing, unexpected or misshaped `thinker.` key.
    """
    directory = Path(directory)
    config = ThinkerConfig.from_dict(read_config(directory))
    model = empty_model(OmniThinker, config, resolve_dtype(dtype), device)
    _rebuild_fixed_tables(model)
    load_state_dict_strict(model, load_prefixed_tensors(directory, THINKER_PREFIX), assign=True)
    model = model.to(device)
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model


def _rebuild_fixed_tables(model: OmniThinker) -> None:
    """Recompute the encoders' tables that are not in the checkpoint: built on the meta
    device by `empty_model`, they hold no values (the vision rotary frequencies) or
    uninitialised memory (the audio sinusoids) after `to_empty`."""
    config = model.thinker_config
    rebuild_rotary(model.visual)
    audio = config.audio_config
    table = model.audio_tower.positional_embedding
    with torch.no_grad():
        table.copy_(sinusoid_positions(audio.max_source_positions, audio.d_model).to(table.dtype))
