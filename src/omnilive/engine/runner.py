"""The model runner: ONE forward per engine step for every decode row and prefill chunk.

A step's work is a list of (request, start, end): compute the request's tokens start..end-1
(one token for a decode, a chunk for a prefill). The weights are read once per step whatever
the mix: on a CPU, where a decode step costs what reading the weights does, a request that
joins while others decode rides along instead of paying its own pass.

Rows are right-padded to the longest; the model runs only the real tokens (positions -1 are
padding). What a row feeds:
- a text request: its token ids, rotary position = cache position;
- a request with a `prepared` multimodal prompt: for prompt positions the prompt's own
  embeddings (media merged) and M-RoPE ids; for every later token (the reply, forced tokens)
  the token's embedding, and all three rotary ids = cache position + the prompt's delta;
- a prepared prompt with DeepStack features (Qwen3-VL): those of the positions the row
  computes (a chunk takes its own slice), zeros for every other row and position.
Any decoder built on model.qwen2.Qwen2ForCausalLM runs here (Qwen2 text, the Omni thinker,
Qwen2.5-VL, Qwen3-VL): `forward(input_ids, positions, cache, rows, inputs_embeds=, rope_positions=,
deepstack=)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnilive.engine.request import Request
from omnilive.model.kv_cache import PagedKVCache
from omnilive.model.qwen2 import Qwen2ForCausalLM


@dataclass(frozen=True)
class Work:
    request: Request
    start: int  # token index (= position) of the first token to compute
    end: int  # one past the last; the request's next token is due when end == len(token_ids)

    @property
    def size(self) -> int:
        return self.end - self.start


class ModelRunner:
    def __init__(self, model: Qwen2ForCausalLM, cache: PagedKVCache):
        self.model, self.cache = model, cache
        self.mrope = model.config.mrope_section is not None  # three rotary ids per token

    def run(self, work: list[Work]) -> torch.Tensor:
        """One forward over every row of `work`; the final hidden states [rows, width, H]."""
        device = self.model.device
        width = max(w.size for w in work)
        positions = torch.full((len(work), width), -1, dtype=torch.long)
        for i, w in enumerate(work):
            positions[i, : w.size] = torch.arange(w.start, w.end)
        rows = torch.tensor([w.request.row for w in work], dtype=torch.long, device=device)
        rope = self._rope_positions(work, width)
        prompt_tokens = self._prompt_tokens(work, positions)
        if any(w.request.prepared is not None and w.start < len(w.request.prompt_ids) for w in work):
            embeds = self._embeds(work, width)
            return self.model(None, positions.to(device), self.cache, rows, inputs_embeds=embeds, rope_positions=rope,
                              prompt_tokens=prompt_tokens, **self._deepstack(work, width))
        input_ids = torch.zeros((len(work), width), dtype=torch.long)
        for i, w in enumerate(work):
            input_ids[i, : w.size] = torch.tensor(w.request.token_ids[w.start : w.end])
        return self.model(input_ids.to(device), positions.to(device), self.cache, rows, rope_positions=rope,
                          prompt_tokens=prompt_tokens)

    def logits(self, work: list[Work], hidden: torch.Tensor) -> tuple[list[Request], torch.Tensor]:
        """The requests whose next token is due (their row reached their last token) and
        the logits [len(due), V] of that last token."""
        due, last = [], []
        width = hidden.shape[1]
        for i, w in enumerate(work):
            if w.end == len(w.request.token_ids):
                due.append(w.request)
                last.append(i * width + w.size - 1)
        if not due:
            return due, hidden.new_empty(0)
        states = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(last, device=hidden.device)]  # [len(due), H]
        return due, self.model.compute_logits(states)

    def _prompt_tokens(self, work: list[Work], positions: torch.Tensor) -> torch.Tensor | None:
        """[rows, width] bool: the tokens that belong to their request's prompt (a quantised
        model computes them on its float copies; a reply's tokens, recomputed or not, never), or
        None when no row computes any."""
        if all(w.start >= len(w.request.prompt_ids) for w in work):
            return None
        prompt_lengths = torch.tensor([len(w.request.prompt_ids) for w in work])
        return ((positions >= 0) & (positions < prompt_lengths[:, None])).to(self.model.device)

    def _embeds(self, work: list[Work], width: int) -> torch.Tensor:
        """[rows, width, H]: prompt embeddings where a row computes prompt positions of a
        prepared prompt, token embeddings elsewhere (one lookup for all of those)."""
        device = self.model.device
        hidden_size = self.model.config.hidden_size
        embeds = torch.zeros((len(work), width, hidden_size), dtype=self.model.dtype, device=device)
        token_rows, token_cols, token_ids = [], [], []
        for i, w in enumerate(work):
            request = w.request
            split = w.start
            if request.prepared is not None:  # the prompt's own embeddings up to its end
                split = min(max(w.start, len(request.prompt_ids)), w.end)
                embeds[i, : split - w.start] = request.prepared.embeds[w.start : split].to(embeds.dtype)
            for position in range(split, w.end):
                token_rows.append(i)
                token_cols.append(position - w.start)
                token_ids.append(request.token_ids[position])
        if token_ids:
            looked_up = self.model.model.embed_tokens(torch.tensor(token_ids, device=device))
            embeds[torch.tensor(token_rows, device=device), torch.tensor(token_cols, device=device)] = looked_up
        return embeds

    def _deepstack(self, work: list[Work], width: int) -> dict[str, torch.Tensor]:
        """{"deepstack": [L, rows, width, H]} when a row computes prompt positions of a prompt
        with DeepStack features; {} otherwise (the model's forward takes none)."""
        rows = [(i, w, w.request.prepared.deepstack) for i, w in enumerate(work)
                if w.request.prepared is not None and w.request.prepared.deepstack is not None
                and w.start < len(w.request.prompt_ids)]
        if not rows:
            return {}
        deepstack = torch.zeros((rows[0][2].layers, len(work), width, self.model.config.hidden_size),
                                dtype=self.model.dtype, device=self.model.device)
        for i, w, features in rows:
            split = min(len(w.request.prompt_ids), w.end)
            deepstack[:, i, : split - w.start] = features.dense(w.start, split).to(deepstack.dtype)
        return {"deepstack": deepstack}

    def _rope_positions(self, work: list[Work], width: int) -> torch.Tensor | None:
        """[3, rows, width] M-RoPE ids (a prepared prompt's own, then position + its delta);
        None for a plain decoder (the rotary id is the position)."""
        if not self.mrope:
            return None
        rope = torch.zeros((3, len(work), width), dtype=torch.long)
        for i, w in enumerate(work):
            request = w.request
            delta, split = 0, w.start
            if request.prepared is not None:
                delta = request.prepared.rope_delta
                split = min(max(w.start, len(request.prompt_ids)), w.end)
                rope[:, i, : split - w.start] = request.prepared.rope.positions[:, w.start : split].cpu()
            rope[:, i, split - w.start : w.size] = torch.arange(split, w.end) + delta
        return rope.to(self.model.device)
