"""Text-only checkpoints behind the native engine: Qwen3 and Qwen3-MoE (thinking and instruct).

    omnilive serve --model /models/Qwen3-4B        (config.json `model_type: qwen3`)
    omnilive serve --model /models/Qwen3-30B-A3B   (`qwen3_moe`)

The decoder is model.qwen2's with Qwen3's q/k head norms. The prompt is the checkpoint's own
chat template over the messages' text; `chat_template_kwargs` reach the template as they do
in transformers and vLLM (Qwen3: `{"enable_thinking": false}` answers without thinking).
Reasoning between `<think>` and `</think>` streams as reasoning, and the thinking budget
(`max_thinking_tokens`, `reasoning_effort`) is enforced by the engine (engine/thinking.py).
Images, audio and video are refused: the model reads text only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from omnilive.backends.native_prompt import OmniPrompt, load_omni_tokenizer
from omnilive.backends.registry import OmniModel
from omnilive.model.packed import pack_decoder
from omnilive.model.thinker import ThinkerMedia
from omnilive.model.tokenizer import Tokenizer
from omnilive.model.weights import load_pretrained
from omnilive.backends.tool_prompt import template_entry, with_tools
from omnilive.types import EngineError, Message, Tool

# Qwen3's chat template in short, for a directory that lacks one: thinking unless disabled
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}"
)


class TextProcessor:
    """The prompt of a text-only model: the chat template over each message's text."""

    input_modalities = ("text",)

    def __init__(self, tokenizer: Tokenizer, family: str, max_prompt_tokens: int | None = None):
        self.tokenizer, self.family, self.max_prompt_tokens = tokenizer, family, max_prompt_tokens

    def build(self, messages: Sequence[Message], speak: bool = False,
              template_kwargs: Mapping[str, Any] | None = None, tools: Sequence[Tool] = ()) -> OmniPrompt:
        if any(not isinstance(part, str) for message in messages for part in message.content):
            raise EngineError(f"{self.family} reads text only: send no images, audio or video", param="messages",
                              code="unsupported_input")
        messages, tool_variables = with_tools(messages, tools, self.tokenizer.info.chat_template)
        chat = [template_entry(message, message.text) for message in messages]
        text = self.tokenizer.render_chat(chat, add_generation_prompt=True, **tool_variables,
                                          **dict(template_kwargs or {}))
        return OmniPrompt(self.tokenizer.encode(text), ThinkerMedia(), image_tokens=0, audio_tokens=0)


def load_qwen3(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    """Decoder, tokenizer and prompt builder of a Qwen3 or Qwen3-MoE text checkpoint."""
    model = load_pretrained(directory, dtype, device)
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    family = "Qwen3-MoE" if model.config.num_experts else "Qwen3"
    tokenizer = load_omni_tokenizer(directory, fallback_template=QWEN3_CHAT_TEMPLATE)
    processor = TextProcessor(tokenizer, family, model.config.max_position_embeddings)
    return OmniModel(thinker=model, tokenizer=tokenizer, processor=processor, family=family)
