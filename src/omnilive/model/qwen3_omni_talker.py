"""Qwen3-Omni talker: the thinker's reply text → codec frames of `num_code_groups` codes each.

Two decoders, both holding no request state (the caller passes caches and slots):

- the talker (`model.`): a Qwen3-MoE decoder (q/k norm, interleaved M-RoPE, every layer a
  sparse MoE with a shared expert) over inputs in its own width. Its `codec_head` picks the
  first code of each frame (codebook 0, plus the control tokens such as codec EOS).
- the code predictor (`code_predictor.`): a small dense Qwen3 decoder that writes the frame's
  other codes one after another (multi-token prediction): it starts from the talker's last
  hidden state and the first code's embedding, and code g (g >= 1) comes from `lm_head[g-1]`,
  its embedding from `codec_embedding[g-1]`. Each frame is a fresh 2..G-token sequence.

One request's talker sequence, as Qwen3OmniMoeForConditionalGeneration.generate builds it:

  prefill:
    every token of the prompt's user turns: text_projection(thinker embedding), or for a
      media placeholder hidden_projection(the thinker's hidden state after `accept_hidden_layer`)
    the last assistant turn's first 3 tokens ("<|im_start|>assistant\\n"), projected, 4 times
      tts_pad, then tts_bos, then the turn's next text token (reply token 0 when the prompt ends
      there), each plus a codec embedding: zeros × 3, nothink, think_bos, think_eos, the voice's
      speaker id, codec pad, codec bos
  decode step k (k = 0, 1, ...), fed the frame chosen at the previous step:
    Σ the frame's code embeddings + text input k: the turn's later text tokens projected (reply
    tokens as the thinker feeds them back), then tts_eos once, then tts_pad for ever.

Rotary positions: the user turns keep the thinker's M-RoPE positions, each run of kept tokens
moved to start right after the talker's previous position (what the reference's rope index of
the talker's own input ids gives: positions inside a run are relative); the assistant part and
every decode step count on from there on all three axes.
Parameter names equal the checkpoint keys under `talker.`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.kv_cache import FrameKVCache
from omnilive.model.moe import SharedExpertMoE
from omnilive.model.moe_int8 import quantize_experts_int8
from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.packed import fuse_packed_projections, pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.talker import TalkerTextInputs
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

TALKER_PREFIX = "talker."
ASSISTANT_CODEC_SLOTS = 9  # "<|im_start|>assistant\n", 4 pads, bos, first text token


@dataclass(frozen=True)
class Qwen3OmniTalkerConfig:
    """`talker_config` of a Qwen3-Omni config.json (its names), plus the top-level token ids
    the talker's input is built from."""

    text_config: Qwen2Config
    code_predictor_config: Qwen2Config
    shared_expert_intermediate_size: int = 0  # of text_config in the file
    num_code_groups: int = 32
    thinker_hidden_size: int = 2048
    accept_hidden_layer: int = 18
    codec_eos_token_id: int = 4198
    codec_nothink_id: int = 4203
    codec_think_bos_id: int = 4204
    codec_think_eos_id: int = 4205
    codec_pad_id: int = 4196
    codec_bos_id: int = 4197
    audio_token_id: int = 151646
    image_token_id: int = 151655
    video_token_id: int = 151656
    speaker_id: Mapping[str, int] = field(default_factory=dict)
    # top level of config.json
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    user_token_id: int = 872
    assistant_token_id: int = 77091
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """From a whole Qwen3-Omni config.json dict."""
        talker = dict(raw.get("talker_config") or {})
        text = dict(talker.get("text_config") or {})
        text_config = Qwen2Config.from_dict({**text, "model_type": "qwen3_omni_moe_text", "attention_bias": False})
        predictor = dict(talker.get("code_predictor_config") or {})
        predictor_config = Qwen2Config.from_dict({**predictor, "model_type": "qwen3", "attention_bias": False})
        names = {f.name for f in fields(cls)} - {"text_config", "code_predictor_config"}
        scalars = {**{k: v for k, v in raw.items() if k in names}, **{k: v for k, v in talker.items() if k in names}}
        scalars["speaker_id"] = {name.lower(): int(i) for name, i in (talker.get("speaker_id") or {}).items()}
        return cls(text_config=text_config, code_predictor_config=predictor_config,
                   shared_expert_intermediate_size=int(text.get("shared_expert_intermediate_size", 0)), **scalars)

    @property
    def codebook_size(self) -> int:
        """Codes of one codebook: the talker's vocabulary above it holds only control tokens."""
        return self.code_predictor_config.vocab_size

    def speaker(self, voice: str) -> int:
        """The codec id of a voice, by name in any case ("Chelsie", "chelsie")."""
        try:
            return self.speaker_id[voice.lower()]
        except KeyError:
            raise ValueError(f"unknown voice {voice!r}; this checkpoint has {sorted(self.speaker_id)}") from None


@dataclass(frozen=True)
class Qwen3Voice:
    """A voice of the checkpoint's `speaker_id` table: the codec id the talker's prefill takes."""

    name: str
    speaker_id: int

    def to(self, device: torch.device | str) -> Qwen3Voice:
        return self  # no tensors


def checkpoint_voices(config: Qwen3OmniTalkerConfig) -> dict[str, Qwen3Voice]:
    """The voices by display name ("chelsie" → "Chelsie")."""
    return {name.capitalize(): Qwen3Voice(name.capitalize(), i) for name, i in config.speaker_id.items()}


class ResizeMLP(nn.Module):
    """thinker width → talker width (`linear_fc1`, SiLU, `linear_fc2`)."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(in_size, hidden_size)
        self.linear_fc2 = nn.Linear(hidden_size, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class CodecDecoder(Qwen2ForCausalLM):
    """A Qwen2ForCausalLM whose token embedding and head are replaced by codec tables: never
    tied, and its dtype / device read off the final norm (the embedding is gone)."""

    def tie_weights(self) -> None:
        """Never tied."""

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device


class CodePredictor(CodecDecoder):
    """The dense Qwen3 decoder of the residual codes: one embedding table and one head per code
    after the first (`model.codec_embedding.N`, `lm_head.N`)."""

    def __init__(self, config: Qwen2Config, num_code_groups: int):
        super().__init__(config)
        del self.model.embed_tokens, self.lm_head
        self.model.codec_embedding = nn.ModuleList(nn.Embedding(config.vocab_size, config.hidden_size)
                                                   for _ in range(num_code_groups - 1))
        self.lm_head = nn.ModuleList(nn.Linear(config.hidden_size, config.vocab_size, bias=False)
                                     for _ in range(num_code_groups - 1))


class Qwen3OmniTalker(CodecDecoder):
    """The MoE talker decoder with its projections, `codec_head` and `code_predictor`;
    `config` is the decoder's Qwen2Config, `talker_config` the whole."""

    def __init__(self, config: Qwen3OmniTalkerConfig):
        text = config.text_config
        super().__init__(text)
        self.talker_config = config
        for layer in self.model.layers:
            layer.mlp = SharedExpertMoE(text.hidden_size, text.moe_intermediate_size, text.num_experts,
                                        text.num_experts_per_tok, text.norm_topk_prob,
                                        config.shared_expert_intermediate_size)
        del self.model.embed_tokens, self.lm_head
        self.model.codec_embedding = nn.Embedding(text.vocab_size, text.hidden_size)
        self.codec_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.text_projection = ResizeMLP(config.thinker_hidden_size, text.intermediate_size, text.hidden_size)
        self.hidden_projection = ResizeMLP(config.thinker_hidden_size, text.intermediate_size, text.hidden_size)
        self.code_predictor = CodePredictor(config.code_predictor_config, config.num_code_groups)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] → float32 logits of a frame's first code [..., vocab]."""
        return self.codec_head(hidden).float()

    @torch.inference_mode()
    def predict_frame(self, last_hidden: torch.Tensor, first_codes: torch.Tensor, cache, slots: torch.Tensor,
                      choose: Callable[[int, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of B frames whose first codes are chosen.

        last_hidden [B, H]: the talker's final hidden state that chose them; first_codes [B];
        cache: the code predictor's (make_predictor_cache; a KVCache's rows are `slots`);
        choose(g, logits [B, codebook]) → code g of each row [B]. Returns (codes [B, G], the next talker input's
        codec part [B, H]: the sum of the frame's code embeddings)."""
        predictor = self.code_predictor
        first = self.model.codec_embedding(first_codes)
        B = first_codes.shape[0]
        x = torch.stack([last_hidden.to(self.dtype), first], dim=1)  # [B, 2, H]
        positions = torch.arange(2, device=self.device).expand(B, 2)
        codes, embeds = [first_codes], [first]
        for group in range(1, self.talker_config.num_code_groups):
            hidden = predictor(None, positions, cache, slots, inputs_embeds=x)[:, -1]
            code = choose(group, predictor.lm_head[group - 1](hidden).float()).to(self.device)
            codes.append(code)
            embeds.append(predictor.model.codec_embedding[group - 1](code))
            x, positions = embeds[-1][:, None], positions[:, -1:] + 1
        return torch.stack(codes, dim=1), torch.stack(embeds, dim=1).sum(1)

    def make_predictor_cache(self, max_rows: int) -> FrameKVCache:
        """The code predictor's cache: one frame (G positions) for each of up to `max_rows` rows
        stepped together (predict_frame's batch row b uses row b whatever its slot)."""
        c = self.code_predictor.config
        return FrameKVCache(c.num_hidden_layers, max_rows, c.num_key_value_heads, self.talker_config.num_code_groups,
                            c.attention_head_dim, self.dtype, self.device)


@dataclass(frozen=True)
class Qwen3TalkerPrefill:
    """The first talker step of one request."""

    inputs_embeds: torch.Tensor  # [L, H] in the talker's width
    rope_positions: torch.Tensor  # [3, L]
    text_inputs: torch.Tensor  # [n, H]: text inputs of the first decode steps the prompt already holds

    @property
    def length(self) -> int:
        return self.inputs_embeds.shape[0]

    @property
    def next_rope_position(self) -> int:
        return int(self.rope_positions.max()) + 1


def user_turn_mask(ids: torch.Tensor, config: Qwen3OmniTalkerConfig) -> torch.Tensor:
    """[T] bool: the tokens of user turns (from a turn's <|im_start|> up to the next one)."""
    T = ids.shape[0]
    index = torch.arange(T, device=ids.device)
    turn_start = torch.where(ids == config.im_start_token_id, index, -1).cummax(0).values
    role = ids[(turn_start + 1).clamp(0, T - 1)]
    return (turn_start >= 0) & (role == config.user_token_id)


@torch.inference_mode()
def build_talker_prefill(
    talker: Qwen3OmniTalker,
    thinker_embed: Callable[[torch.Tensor], torch.Tensor],  # the thinker's embed_tokens
    prompt_ids: torch.Tensor,  # [T]
    prompt_embeds: torch.Tensor,  # [T, E] the thinker's input embeddings
    reply_embeds: torch.Tensor,  # [N, E] thinker embeddings of the reply tokens fed back so far, N >= 1
    speaker_id: int,
    layer_hidden: torch.Tensor | None = None,  # [T, E] after accept_hidden_layer; needed for user media
    prompt_rope_positions: torch.Tensor | None = None,  # [3, T] the thinker's; None = 0..T-1 (text prompts)
) -> Qwen3TalkerPrefill:
    config = talker.talker_config
    device, dtype = talker.device, talker.dtype
    prompt_ids = prompt_ids.to(device)
    ids = prompt_ids.tolist()
    starts = [i for i in range(len(ids) - 1) if ids[i] == config.im_start_token_id
              and ids[i + 1] == config.assistant_token_id]
    if not starts:
        raise ValueError("the prompt has no assistant turn (<|im_start|>assistant) for the talker")
    start = starts[-1]
    assistant = torch.cat([prompt_embeds[start:].to(device), reply_embeds.to(device)]).to(dtype)
    if assistant.shape[0] < 4:
        raise ValueError("the talker needs the assistant turn's first text token")
    projected = talker.text_projection(assistant)  # [A, H]
    specials = torch.tensor([config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id],
                            device=device)
    tts_bos, _, tts_pad = talker.text_projection(thinker_embed(specials).to(dtype))
    text_part = torch.cat([projected[:3], tts_pad.expand(4, -1), tts_bos[None], projected[3:4]])
    codec_ids = torch.tensor([config.codec_nothink_id, config.codec_think_bos_id, config.codec_think_eos_id,
                              speaker_id, config.codec_pad_id, config.codec_bos_id], device=device)
    codec_part = torch.cat([text_part.new_zeros(3, text_part.shape[1]), talker.model.codec_embedding(codec_ids)])

    user = user_turn_mask(prompt_ids, config)
    media = torch.isin(prompt_ids, torch.tensor([config.audio_token_id, config.image_token_id,
                                                  config.video_token_id], device=device))
    user_inputs = talker.text_projection(prompt_embeds.to(device, dtype)[user & ~media])
    if (user & media).any():
        if layer_hidden is None:
            raise ValueError("the prompt's user turns hold media: the talker needs the thinker's layer_hidden")
        user_inputs = torch.empty(int(user.sum()), projected.shape[1], device=device, dtype=dtype)
        user_media = media[user]
        user_inputs[user_media] = talker.hidden_projection(layer_hidden.to(device, dtype)[user & media])
        user_inputs[~user_media] = talker.text_projection(prompt_embeds.to(device, dtype)[user & ~media])
    inputs = torch.cat([user_inputs, text_part + codec_part])
    user_positions = kept_positions(prompt_rope_positions, user) if prompt_rope_positions is not None else \
        torch.arange(int(user.sum()), device=device).expand(3, -1)
    start_at = int(user_positions.max()) + 1 if user_positions.numel() else 0
    assistant_positions = torch.arange(start_at, start_at + ASSISTANT_CODEC_SLOTS, device=device).expand(3, -1)
    rope_positions = torch.cat([user_positions.to(device), assistant_positions], dim=1)
    return Qwen3TalkerPrefill(inputs, rope_positions, projected[4:])


def kept_positions(positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """M-RoPE positions [3, T] of the tokens `keep` [T] marks, as if the others were never
    there: each run of kept tokens moved to start right after the previous run's largest."""
    kept, out, next_start = keep.tolist(), [], 0
    i = 0
    while i < len(kept):
        if not kept[i]:
            i += 1
            continue
        j = i
        while j < len(kept) and kept[j]:
            j += 1
        run = positions[:, i:j]
        out.append(run - run[:, :1].min() + next_start)
        next_start = int(out[-1].max()) + 1
        i = j
    return torch.cat(out, dim=1) if out else positions.new_zeros(3, 0)


@torch.inference_mode()
def new_talker_text_inputs(talker: Qwen3OmniTalker, thinker_embed: Callable[[torch.Tensor], torch.Tensor],
                           prefill: Qwen3TalkerPrefill) -> TalkerTextInputs:
    """The text-input queue of a request: the prefill's pending text inputs, then what is pushed
    (projected reply tokens), then tts_eos once and tts_pad for ever."""
    config = talker.talker_config
    ends = thinker_embed(torch.tensor([config.tts_eos_token_id, config.tts_pad_token_id], device=talker.device))
    eos, pad = talker.text_projection(ends.to(talker.dtype))
    queue = TalkerTextInputs(eos_embed=eos, pad_embed=pad)
    for text_input in prefill.text_inputs:
        queue.push(text_input)
    return queue


def load_qwen3_omni_talker(directory: str | Path, dtype: torch.dtype | str | None = None,
                           device: str = "cpu", int8_experts: bool = False) -> Qwen3OmniTalker:
    """The talker (and code predictor) of a Qwen3-Omni checkpoint, in eval mode; every
    `talker.` key consumed (WeightsMismatchError names the rest). int8_experts: the talker's
    MoE experts held as int8 (model/moe_int8.py; its shared experts stay float)."""
    config = Qwen3OmniTalkerConfig.from_dict(read_config(directory))
    # built on the CPU: the checkpoint's tensors replace these (assign) before the move to `device`
    model = empty_model(Qwen3OmniTalker, config, resolve_dtype(dtype), "cpu")
    load_state_dict_strict(model, load_prefixed_tensors(directory, TALKER_PREFIX), assign=True)
    if int8_experts:
        quantize_experts_int8(model.model.layers)
    model = model.to(device)
    # a frame is one talker step and G - 1 code-predictor steps of a few rows, each reading all
    # the predictor's weights: oneDNN's packed layout reads them faster, and q/k/v and gate/up
    # as one call each save per-call costs (model/packed.py)
    for decoder in (model, model.code_predictor):
        fuse_packed_projections(decoder.model.layers)
        pack_decoder(decoder)
    return model


__all__ = [
    "CodePredictor",
    "Qwen3OmniTalker",
    "Qwen3OmniTalkerConfig",
    "Qwen3TalkerPrefill",
    "Qwen3Voice",
    "build_talker_prefill",
    "checkpoint_voices",
    "load_qwen3_omni_talker",
    "new_talker_text_inputs",
    "user_turn_mask",
]
