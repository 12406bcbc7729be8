"""A tiny random Qwen3 thinking checkpoint (float32), built with transformers' own classes.

Its tokenizer is the Omni tests' tiny BPE plus `<think>` and `</think>` as single added tokens
(as in Qwen3's vocabulary); its chat template opens the think block in the generation prompt,
as Qwen3's thinking templates do, and closes it empty for `enable_thinking: false`. The output
rows of `</think>` and of the stop tokens are zeroed: greedy decoding never picks them among
the random logits, so the model thinks until the engine's budget closes its thoughts and answers
until max_tokens — every run reaches the limits a test sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.model.omni_tiny import SPECIAL_TOKENS, build_tiny_tokenizer, randomize

THINK, END_THINK = "<think>", "</think>"
VOCAB = 192
CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{%- else %}<think>\n{%- endif %}{%- endif %}"
)
CONFIG = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False, "attention_bias": False,
    "use_sliding_window": False, "eos_token_id": SPECIAL_TOKENS["<|im_end|>"],
}


@dataclass
class TinyQwen3:
    directory: Path
    model: torch.nn.Module  # transformers' Qwen3ForCausalLM
    think_id: int
    end_think_id: int


MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48, "norm_topk_prob": True,
       "decoder_sparse_step": 1, "mlp_only_layers": []}


def build_tiny_qwen3(directory: str | Path, seed: int = 0, moe: bool = False) -> TinyQwen3:
    """moe: a Qwen3-MoE checkpoint (4 experts, top 2) instead of a dense one."""
    from tokenizers import AddedToken
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens([AddedToken(THINK, normalized=False), AddedToken(END_THINK, normalized=False)])
    think_id, end_think_id = tokenizer.token_to_id(THINK), tokenizer.token_to_id(END_THINK)
    assert max(think_id, end_think_id) < VOCAB
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "tokenizer_class": "Qwen2Tokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    if moe:
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**CONFIG, **MOE)).float().eval()
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**CONFIG)).float().eval()
    randomize(model, seed)
    with torch.no_grad():
        for token in (END_THINK, "<|im_end|>", "<|endoftext|>"):
            model.lm_head.weight[tokenizer.token_to_id(token)] = 0.0
    model.save_pretrained(directory)
    return TinyQwen3(directory, model, think_id, end_think_id)
