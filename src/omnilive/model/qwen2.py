"""Qwen2 decoder-only language model, and the decoders that differ from it in a detail:
Llama (biases), Qwen3 (no q/k/v bias, an RMSNorm on every query and key head), Qwen3-MoE
(Qwen3 with a sparse mixture of experts as the MLP of most layers, model/moe.py), and
Qwen3-VL's text model (Qwen3 with interleaved M-RoPE and DeepStack: visual features added to
the hidden states after the first layers; its MoE keeps each layer's experts fused).

Parameter names equal the Hugging Face checkpoint keys, so a safetensors checkpoint loads
with no renaming. The model holds no request state: every call gets the KV cache, the cache
slots of its rows and the position of every token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from omnilive.model.kv_cache import KVCache, PagedKVCache
from omnilive.model.moe import FusedSparseMoE, SparseMoE
from omnilive.model.layers import (
    Attention,
    CacheWrite,
    PagedCacheWrite,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
)
from omnilive.model.quant_linear import prompt_rows


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # bias on q/k/v: True for qwen2, False for llama / SmolLM2
    attention_output_bias: bool = False  # bias on o_proj (llama ties it to attention_bias)
    mlp_bias: bool = False
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    # M-RoPE (Qwen2-VL / Qwen2.5-Omni): rotary frequencies per position axis (t, h, w)
    mrope_section: tuple[int, ...] | None = None
    # Qwen3-MoE: a sparse expert MLP in every decoder_sparse_step-th layer but mlp_only_layers
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    model_type: str = "qwen2"
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def qk_norm(self) -> bool:
        """Qwen3: each query and key head is RMS-normalised before the rotary embedding."""
        return self.model_type in ("qwen3", "qwen3_moe", "qwen3_vl_text", "qwen3_vl_moe_text", "qwen3_omni_moe_text")

    @property
    def mrope_interleaved(self) -> bool:
        """Qwen3-VL, Qwen3-Omni: the M-RoPE axes alternate frequency by frequency (layers.RotaryEmbedding)."""
        return self.model_type in ("qwen3_vl_text", "qwen3_vl_moe_text", "qwen3_omni_moe_text")

    def is_moe_layer(self, index: int) -> bool:
        return (self.num_experts > 0 and index not in self.mlp_only_layers
                and (index + 1) % self.decoder_sparse_step == 0)

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen2Config:
        """From a HF config.json dict; unknown keys are ignored."""
        d = dict(d)
        model_type = d.get("model_type", "qwen2")
        # transformers >= 5 moves rope_theta into rope_parameters; dtype was torch_dtype
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        if d.get("use_sliding_window"):
            raise NotImplementedError("sliding-window attention is not supported")
        if rope.get("rope_type", "default") not in ("default", None):
            raise NotImplementedError(f"rope type {rope['rope_type']!r} is not supported")
        if d.get("mrope_section") is None and rope.get("mrope_section") is not None:
            d["mrope_section"] = rope["mrope_section"]
        if d.get("mrope_section") is not None:
            d["mrope_section"] = tuple(d["mrope_section"])
        if "num_experts" not in d and "num_local_experts" in d:  # transformers 5's name
            d["num_experts"] = d["num_local_experts"]
        d["mlp_only_layers"] = tuple(d.get("mlp_only_layers") or ())
        if "torch_dtype" not in d and "dtype" in d:
            d["torch_dtype"] = d["dtype"]
        if "attention_bias" not in d:
            d["attention_bias"] = model_type == "qwen2"  # qwen2 always has q/k/v bias
        elif model_type != "qwen2" and "attention_output_bias" not in d:
            d["attention_output_bias"] = d["attention_bias"]  # llama puts it on o_proj too
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config, index: int = 0):
        super().__init__()
        self.self_attn = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.attention_head_dim,
            qkv_bias=config.attention_bias,
            output_bias=config.attention_output_bias,
            qk_norm_eps=config.rms_norm_eps if config.qk_norm else None,
        )
        if config.is_moe_layer(index) and config.model_type == "qwen3_vl_moe_text":
            self.mlp = FusedSparseMoE(config.hidden_size, config.moe_intermediate_size, config.num_experts,
                                      config.num_experts_per_tok)
        elif config.is_moe_layer(index):
            self.mlp = SparseMoE(config.hidden_size, config.moe_intermediate_size, config.num_experts,
                                 config.num_experts_per_tok, config.norm_topk_prob)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, k_cache, v_cache, write: CacheWrite | PagedCacheWrite) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, write)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, index) for index in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.attention_head_dim, config.rope_theta, config.mrope_section,
                                          interleaved=config.mrope_interleaved)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with the embedding when the config says so (again after `to_empty`)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def forward(
        self,
        input_ids: torch.Tensor | None,  # [B, T] long; None with inputs_embeds
        positions: torch.Tensor,  # [B, T] long, -1 = right padding
        cache: KVCache | PagedKVCache,
        slots: torch.Tensor,  # [B] long: the cache slot (paged: block-table row) of each row
        *,
        inputs_embeds: torch.Tensor | None = None,  # [B, T, H]: used instead of embedding input_ids
        rope_positions: torch.Tensor | None = None,  # [B, T] or [3, B, T] (M-RoPE); default positions
        deepstack: torch.Tensor | None = None,  # [L, B, T, H]: added after each of the first L layers
        prompt_tokens: torch.Tensor | None = None,  # [B, T] bool: prompt tokens (quant_linear.prompt_rows)
    ) -> torch.Tensor:
        """Run B rows of T tokens; returns the final hidden states [B, T, H].

        Keys/values of the valid tokens are written into the cache at (slot, position); each
        query attends to the keys of its row at positions <= its own. This one rule covers
        prefill (whole or chunked) and batched decode of rows of different lengths.

        `positions` say where a token sits in its row (cache index, causal order);
        `rope_positions` what the rotary embedding sees. They differ only for multimodal
        prompts, whose media tokens share M-RoPE ids (see model.rope_index).

        `deepstack` (Qwen3-VL): visual features of intermediate ViT layers, added to the
        hidden states that leave decoder layer i < L; zero at every position that is no image
        or video token (adding zero changes nothing, so one dense tensor serves any batch).

        `prompt_tokens` lets quantised linears with a float copy compute those tokens on it.
        """
        write = cache.writer(slots, positions)  # where each token's key/value goes, for all layers
        pack = write.pack_index  # with right padding, only the valid tokens run through the layers
        if rope_positions is None:
            rope_positions = positions
        # padding tokens (position -1) rotate as position 0: never used when packed
        rope_positions = rope_positions.masked_fill(positions < 0, 0)
        cos, sin = self.model.rotary_emb(rope_positions, self.dtype)  # [B, T, D]
        cos, sin = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])  # [B * T, D]
        if inputs_embeds is None:
            ids = input_ids.reshape(-1)
            x = self.model.embed_tokens(ids if pack is None else ids[pack])
        else:
            embeds = inputs_embeds.to(self.dtype).reshape(-1, inputs_embeds.shape[-1])
            x = embeds if pack is None else embeds[pack]
        if pack is not None:
            cos, sin = cos[pack], sin[pack]
        if deepstack is not None:
            deepstack = deepstack.reshape(deepstack.shape[0], -1, deepstack.shape[-1])  # [L, B * T, H]
            deepstack = deepstack if pack is None else deepstack[:, pack]
        if prompt_tokens is not None:
            prompt_tokens = prompt_tokens.reshape(-1) if pack is None else prompt_tokens.reshape(-1)[pack]
        # x: [B * T or N, H], one row per token that runs
        with prompt_rows(prompt_tokens):
            for index, layer in enumerate(self.model.layers):
                x = layer(x, cos, sin, cache.k[index], cache.v[index], write)
                if deepstack is not None and index < deepstack.shape[0]:
                    x = x + deepstack[index].to(x.dtype)
        x = self.model.norm(x)
        B, T = positions.shape
        if pack is not None:  # padding rows come back as zeros
            x = x.new_zeros(B * T, x.shape[-1]).index_copy_(0, pack, x)
        return x.view(B, T, -1)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] → float32 logits [..., vocab]."""
        return self.lm_head(hidden).float()

    def make_cache(self, max_slots: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        c = self.config
        return KVCache(
            c.num_hidden_layers,
            max_slots,
            c.num_key_value_heads,
            max_len,
            c.attention_head_dim,
            dtype or self.dtype,
            device=self.device,
        )

    def make_paged_cache(
        self,
        max_rows: int,
        max_len: int,
        block_size: int = 16,
        num_blocks: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> PagedKVCache:
        """A paged cache for `max_rows` running rows of up to `max_len` positions; by default
        as many blocks as `max_rows` full-length rows need (the slot cache's memory)."""
        c = self.config
        blocks_per_row = -(-max_len // block_size)
        return PagedKVCache(
            c.num_hidden_layers,
            num_blocks or max_rows * blocks_per_row,
            c.num_key_value_heads,
            block_size,
            c.attention_head_dim,
            max_rows,
            max_len,
            dtype or self.dtype,
            device=self.device,
        )
