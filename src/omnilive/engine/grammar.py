"""Constrained decoding with llguidance: a request's grammar as a mask over the next token.

Each request with a grammar owns a `Grammar` (an llguidance matcher). Before a sampling step
it says which tokens may come next (a bitmask, 32 tokens per int32 word); sampling sets every
other logit to -inf in the same batched call that serves requests without grammars
(sampling.py); the token drawn is then fed back to the matcher. llguidance was measured the
cheapest per token of the libraries that can do this here (bench/grammar_mask.py,
docs/benchmarks.md).

The matcher needs the vocabulary as bytes: `GrammarVocabulary` builds it once per engine
(about a second for a 150k vocabulary), on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import llguidance
import torch

from omnilive.types import EngineError


class GrammarVocabulary:
    """The engine tokenizer's vocabulary as llguidance needs it, built once, on first use."""

    def __init__(self, tokenizer, vocab_size: int):
        """vocab_size: the model's logits width (may exceed the tokenizer's: padding rows)."""
        self._tokenizer, self.vocab_size = tokenizer, vocab_size
        self._built: llguidance.LLTokenizer | None = None
        self._usable: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._built is None:
                self._built = self._build()
            return self._built

    def _build(self) -> llguidance.LLTokenizer:
        t = self._tokenizer
        stops = sorted(t.stop_token_ids)
        size = min(getattr(t, "vocab_size", self.vocab_size), self.vocab_size)
        special = [i for i in range(size) if t.is_special(i)]
        # Control tokens write no text here (the detokenizer drops them), so no grammar can use
        # them, whatever text they are named by; only the stop tokens end a grammar's reply.
        usable = torch.ones(self.vocab_size, dtype=torch.bool)
        usable[[i for i in special if i not in t.stop_token_ids]] = False
        self._usable = bitmask(usable)
        wrapper = _Vocabulary([t.token_bytes(i) for i in range(size)], special, stops[0], t.encode)
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), n_vocab=self.vocab_size, eos_token=stops)

    def compile(self, grammar: str, param: str = "response_format") -> Grammar:
        """A fresh matcher for `grammar`; EngineError (the caller's 400, about `param`) when it is invalid."""
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise EngineError(f"the requested output format cannot be enforced: {'; '.join(messages)[:500]}",
                              param=param, code="invalid_grammar")
        return Grammar(llguidance.LLMatcher(self.tokenizer, grammar), self._usable)


def grammar_problem(grammar: str) -> str | None:
    """Why `grammar` cannot be enforced (its first error line), or None when it can; checked
    without a vocabulary, so a caller can refuse it before any request runs."""
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    if not failed:
        return None
    return messages[0].split("\n")[0].split(": ", 1)[-1] if messages else "it does not compile"


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer. Its encoding never yields a
    control token: text that names one ("<tool_call>" in some vocabularies) is spelled in bytes."""

    def __init__(self, tokens: list[bytes], special: list[int], eos: int, encode):
        self.tokens, self.special_token_ids, self.eos_token_id, self.bos_token_id = tokens, special, eos, None
        self._encode, self._special = encode, set(special)
        self._byte_ids = {data: i for i, data in enumerate(tokens) if len(data) == 1 and i not in self._special}

    def __call__(self, text: str | bytes) -> list[int]:
        ids = []
        for token_id in self._encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text):
            if token_id in self._special:
                ids += [self._byte_ids[bytes([b])] for b in self.tokens[token_id]]
            else:
                ids.append(token_id)
        return ids


class Grammar:
    """One request's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, usable: torch.Tensor):
        """usable: the bitmask of tokens a grammar may ever allow (GrammarVocabulary's)."""
        self._matcher, self._usable = matcher, usable

    def allowed(self) -> torch.Tensor:
        """The tokens that may come next: an int32 bitmask, 32 tokens per word."""
        mask = torch.empty_like(self._usable)
        self._matcher.unsafe_compute_mask_ptr(mask.data_ptr(), mask.numel() * 4)
        return mask & self._usable

    def accept(self, token_id: int) -> None:
        """Advance past a token (one `allowed` permitted)."""
        if not self._matcher.consume_token(token_id):
            raise EngineError(f"the reply left its grammar: {self._matcher.get_error()}", code="grammar_error")


def bitmask(allowed: torch.Tensor) -> torch.Tensor:
    """A bool vector as an int32 bitmask (bit j of word i is token 32·i + j)."""
    padded = torch.nn.functional.pad(allowed, (0, -len(allowed) % 32)).view(-1, 32).to(torch.int64)
    words = (padded << torch.arange(32)).sum(dim=1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(torch.uint8)  # [256, 8]: a byte's bits


def apply_allowed(logits: torch.Tensor, rows: Sequence[int], masks: Sequence[torch.Tensor]) -> None:
    """In place: -inf for every token a row's bitmask forbids. logits: [B, V]; rows index it.
    The int32 words are read as little-endian bytes: bit j of byte k is token 8·k + j."""
    vocab = logits.shape[-1]
    for i, mask in zip(rows, masks):
        allowed = torch.index_select(_BYTE_BITS, 0, mask.view(torch.uint8).long()).flatten()[:vocab]
        row = logits[i]
        row[: len(allowed)].masked_fill_(allowed == 0, float("-inf"))
        row[len(allowed):] = float("-inf")
