"""Qwen2.5-Omni talker: the thinker's hidden states + reply tokens → codec tokens for token2wav.

The talker is a small Qwen2 decoder (M-RoPE, [3, B, T] positions) whose inputs live in the
*thinker's* embedding space (E = the thinker's hidden size): each input is projected to the
talker's width by `thinker_to_talker_proj` before the first layer. Its own codec embeddings
(`model.embed_tokens`, [codec vocab, E]) are added to thinker-side inputs, not used alone.

One request's talker sequence, as Qwen2_5OmniForConditionalGeneration.generate builds it:

  prefill (T prompt tokens + 2):
    thinker prompt embeddings (media placeholders zeroed) + thinker prompt hidden states  × T
    thinker embedding of the voice's text-BOS token            + codec pad embedding
    reply token 0: thinker hidden state + its thinker embedding + codec bos embedding
  decode step k (k = 0, 1, ...), fed the codec token sampled at the previous step:
    codec embedding of that token + text input k, where the text inputs are reply tokens
    1, 2, ... (hidden + embedding), then the thinker's text-EOS embedding once, then the
    text-PAD embedding for ever (the talker keeps speaking after the text ends).

Rotary positions: the prompt keeps the thinker's M-RoPE positions; every later token is text,
so its three position axes are equal and count on from (the prompt's largest position) + 1.

Parameter names equal the checkpoint keys under `talker.`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from omnilive.model.kv_cache import KVCache
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

CHECKPOINT_PREFIX = "talker."


@dataclass(frozen=True)
class TalkerConfig:
    """The `talker_config` of a Qwen2.5-Omni config.json (names as there; HF defaults)."""

    vocab_size: int = 8448  # codec vocabulary
    embedding_size: int = 3584  # the thinker's hidden size: the space talker inputs live in
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    use_sliding_window: bool = False
    tts_text_start_token_id: int = 151860
    tts_text_end_token_id: int = 151861
    tts_text_pad_token_id: int = 151859
    tts_codec_start_token_id: int = 8293
    tts_codec_end_token_id: int = 8294
    tts_codec_pad_token_id: int = 8292
    tts_codec_mask_token_id: int = 8296
    # thinker placeholder tokens whose embeddings the talker sees as zeros
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.use_sliding_window:
            raise NotImplementedError("a talker with sliding-window attention is not supported")
        if sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {self.head_dim // 2}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TalkerConfig:
        """From the `talker_config` dict (or a whole Qwen2.5-Omni config.json dict)."""
        d = dict(d.get("talker_config", d))
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", "default") not in ("default", None):
            raise NotImplementedError(f"rope type {rope['rope_type']!r} is not supported")
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        if "mrope_section" in rope:
            d["mrope_section"] = tuple(rope["mrope_section"])
        if "torch_dtype" not in d and "dtype" in d:
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def decoder_config(self) -> Qwen2Config:
        """The decoder stack: a Qwen2 with q/k/v biases and M-RoPE."""
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            mrope_section=self.mrope_section,
            attention_bias=True,
            torch_dtype=self.torch_dtype,
        )

    @property
    def codec_eos_token_ids(self) -> tuple[int, ...]:
        """Codec tokens that end the speech: the reference generate stops on pad and end."""
        return (self.tts_codec_pad_token_id, self.tts_codec_end_token_id)


class Talker(Qwen2ForCausalLM):
    """The Qwen2 decoder fed through `thinker_to_talker_proj`, with `codec_head` as its head.

    `self.config` is the decoder's Qwen2Config (what the shared decoder code reads);
    `self.talker_config` the full TalkerConfig.
    """

    def __init__(self, config: TalkerConfig):
        super().__init__(config.decoder_config())
        self.talker_config = config
        self.thinker_to_talker_proj = nn.Linear(config.embedding_size, config.hidden_size)
        # codec embeddings are added to thinker-space inputs, so they have the thinker's width
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        # the output head is named codec_head in the checkpoint
        del self.lm_head
        self.codec_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def tie_weights(self) -> None:
        """The talker never ties its codec head to its embeddings (they differ in width)."""

    def embed_codec(self, codec_ids: torch.Tensor) -> torch.Tensor:
        """codec ids [...] → thinker-space embeddings [..., E]."""
        return self.model.embed_tokens(codec_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # [B, T, E] thinker-space inputs, codec embeddings included
        rope_positions: torch.Tensor,  # [3, B, T] M-RoPE positions
        positions: torch.Tensor,  # [B, T] cache index of each token, -1 = right padding
        cache: KVCache,
        slots: torch.Tensor,  # [B] long
    ) -> torch.Tensor:
        """Final hidden states [B, T, H] (see Qwen2ForCausalLM.forward for the cache rules)."""
        projected = self.thinker_to_talker_proj(inputs_embeds.to(self.dtype))
        return super().forward(None, positions, cache, slots, inputs_embeds=projected, rope_positions=rope_positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] → float32 codec logits [..., codec vocab]."""
        return self.codec_head(hidden).float()


@dataclass(frozen=True)
class TalkerPrefill:
    """The first talker step of one request."""

    inputs_embeds: torch.Tensor  # [L, E], L = prompt length + 2
    rope_positions: torch.Tensor  # [3, L]
    codec_ids: tuple[int, ...]  # the talker's own input ids (mask × prompt, pad, bos): the
    # reference's repetition penalty counts them as seen

    @property
    def length(self) -> int:
        return self.inputs_embeds.shape[0]

    @property
    def next_rope_position(self) -> int:
        """Rotary position of the first decode step (all three axes)."""
        return int(self.rope_positions.max()) + 1


class TalkerTextInputs:
    """The thinker-side input of each talker decode step, in order.

    `push` the input of each reply token after the first (thinker hidden state + its thinker
    embedding) as the thinker produces it; `finish` when the thinker's reply ends. Then the
    text-EOS embedding comes once and the text-PAD embedding for ever.
    A reply token counts once the thinker has fed it back (computed its hidden state): the
    token that ends the reply (EOS, or the last one at the length limit) never does.
    """

    def __init__(self, eos_embed: torch.Tensor, pad_embed: torch.Tensor):
        self._pending: deque[torch.Tensor] = deque()
        self._eos_embed, self._pad_embed = eos_embed, pad_embed  # [E] each
        self._finished = False
        self._eos_sent = False

    def push(self, reply_input: torch.Tensor) -> None:
        if self._finished:
            raise RuntimeError("the thinker reply already finished")
        self._pending.append(reply_input)

    def finish(self) -> None:
        self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished

    def ready(self) -> bool:
        """Whether the next decode step can run now (else the talker waits for the thinker)."""
        return bool(self._pending) or self._finished

    def pop(self) -> torch.Tensor:
        if self._pending:
            return self._pending.popleft()
        if not self._finished:
            raise RuntimeError("the talker ran ahead of the thinker: no text input yet")
        if not self._eos_sent:
            self._eos_sent = True
            return self._eos_embed
        return self._pad_embed


def build_talker_prefill(
    talker: Talker,
    thinker_embed: Callable[[torch.Tensor], torch.Tensor],  # the thinker's embed_tokens
    prompt_ids: torch.Tensor,  # [T] the thinker's prompt token ids
    prompt_embeds: torch.Tensor,  # [T, E] the thinker's input embeddings (media features merged in)
    prompt_hidden: torch.Tensor,  # [T, E] the thinker's final (normed) hidden states
    first_reply_input: torch.Tensor,  # [E] reply token 0: its thinker hidden state + embedding
    voice_bos_token: int,  # Voice.bos_token of the chosen speaker
    prompt_rope_positions: torch.Tensor | None = None,  # [3, T] the thinker's; None = text 0..T-1
) -> TalkerPrefill:
    config = talker.talker_config
    T = prompt_ids.shape[0]
    placeholders = torch.tensor(
        [config.audio_token_index, config.image_token_index, config.video_token_index], device=prompt_ids.device
    )
    # the talker sees media only through the hidden states, never through their features
    is_media = torch.isin(prompt_ids, placeholders)[:, None]
    prompt_inputs = prompt_hidden + prompt_embeds.masked_fill(is_media, 0.0)  # [T, E]

    voice_bos = thinker_embed(torch.tensor([voice_bos_token], device=prompt_ids.device))[0]
    codec = talker.embed_codec(
        torch.tensor([config.tts_codec_pad_token_id, config.tts_codec_start_token_id], device=prompt_ids.device)
    ).to(prompt_inputs.dtype)
    inputs_embeds = torch.cat([prompt_inputs, (voice_bos + codec[0])[None], (first_reply_input + codec[1])[None]])

    if prompt_rope_positions is None:
        prompt_rope_positions = torch.arange(T, device=prompt_ids.device).expand(3, T)
    start = int(prompt_rope_positions.max()) + 1 if T else 0
    text_positions = torch.arange(start, start + 2, device=prompt_ids.device).expand(3, 2)
    rope_positions = torch.cat([prompt_rope_positions.to(text_positions), text_positions], dim=1)

    codec_ids = (config.tts_codec_mask_token_id,) * T + (config.tts_codec_pad_token_id, config.tts_codec_start_token_id)
    return TalkerPrefill(inputs_embeds, rope_positions, codec_ids)


def new_talker_text_inputs(talker: Talker, thinker_embed: Callable[[torch.Tensor], torch.Tensor],
                           device: torch.device | str = "cpu") -> TalkerTextInputs:
    """An empty text-input queue with this talker's text EOS / PAD embeddings."""
    config = talker.talker_config
    ends = thinker_embed(torch.tensor([config.tts_text_end_token_id, config.tts_text_pad_token_id], device=device))
    return TalkerTextInputs(eos_embed=ends[0], pad_embed=ends[1])


def build_talker_inputs(
    talker: Talker,
    thinker_embed: Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,  # [T]
    prompt_embeds: torch.Tensor,  # [T, E]
    prompt_hidden: torch.Tensor,  # [T, E]
    reply_embeds: torch.Tensor,  # [N, E] thinker embeddings of the N reply tokens it fed back
    reply_hidden: torch.Tensor,  # [N, E] the thinker's final hidden states at those tokens
    voice_bos_token: int,
    prompt_rope_positions: torch.Tensor | None = None,
) -> tuple[TalkerPrefill, TalkerTextInputs]:
    """The whole talker input of a finished thinker reply: its prefill and its (finished)
    text-input queue. N >= 1: the reply's first token must have been fed back."""
    if reply_embeds.shape[0] < 1:
        raise ValueError("the talker needs at least one reply token the thinker fed back")
    reply_inputs = reply_hidden + reply_embeds  # [N, E]
    prefill = build_talker_prefill(
        talker, thinker_embed, prompt_ids, prompt_embeds, prompt_hidden, reply_inputs[0], voice_bos_token,
        prompt_rope_positions,
    )
    text_inputs = new_talker_text_inputs(talker, thinker_embed, reply_inputs.device)
    for reply_input in reply_inputs[1:]:
        text_inputs.push(reply_input)
    text_inputs.finish()
    return prefill, text_inputs


def talker_weights(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `talker.*` tensors of a whole Qwen2.5-Omni checkpoint, prefix removed."""
    return {k[len(CHECKPOINT_PREFIX):]: v for k, v in checkpoint.items() if k.startswith(CHECKPOINT_PREFIX)}


def load_talker(model_dir: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu") -> Talker:
    """The talker of a Qwen2.5-Omni checkpoint folder (config.json + safetensors shards),
    reading only the shards that hold `talker.*` keys; every key consumed, every shape checked."""
    model_dir = Path(model_dir)
    config = TalkerConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = sorted({file for key, file in weight_map.items() if key.startswith(CHECKPOINT_PREFIX)})
    else:
        shards = sorted(path.name for path in model_dir.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(model_dir / shard, framework="pt") as f:
            names = [key for key in f.keys() if key.startswith(CHECKPOINT_PREFIX)]  # noqa: SIM118 (f is not iterable)
            tensors.update({key: f.get_tensor(key) for key in names})
    model = empty_model(Talker, config, resolve_dtype(dtype), device)  # None = what this machine computes fastest
    load_state_dict_strict(model, talker_weights(tensors))
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model


__all__ = [
    "Talker",
    "TalkerConfig",
    "TalkerPrefill",
    "TalkerTextInputs",
    "build_talker_inputs",
    "build_talker_prefill",
    "load_talker",
    "new_talker_text_inputs",
    "talker_weights",
]
