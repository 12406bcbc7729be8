"""Byte-level BPE tokenizer and chat template, rebuilt from a GGUF file's metadata.

GGUF stores the vocabulary (tokenizer.ggml.tokens / token_type / merges), the name of the
pre-tokenizer (tokenizer.ggml.pre) and the Jinja chat template. We turn them into a HF
`tokenizers.Tokenizer` that splits text exactly as llama.cpp does, and can save it next to
the cached weights so a second start skips the GGUF parsing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

# Token types in tokenizer.ggml.token_type (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The split rules of llama.cpp's pre-tokenizers, by tokenizer.ggml.pre
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_INDIVIDUAL_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
_SPLITS = {"qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT}


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map used by byte-level vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"), byte_level])
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in _INDIVIDUAL_DIGITS else []
    steps += [pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated"), byte_level]
    return pre_tokenizers.Sequence(steps)


def build_bpe(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], pre: str) -> HFTokenizer:
    """A `tokenizers` byte-level BPE equal to llama.cpp's for this vocabulary."""
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>...) and user-defined ones (<tool_call>) are matched whole in text.
    kinds = list(zip(tokens, token_types))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds if k == CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds if k == USER_DEFINED])
    return tokenizer


@dataclass
class TokenizerInfo:
    """The non-vocabulary facts a GGUF file gives about its tokenizer."""

    chat_template: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos_token: bool = False
    extra_stop_token_ids: list[int] = field(default_factory=list)


class Tokenizer:
    """encode / decode / chat template, as the engine needs them."""

    def __init__(self, backend: HFTokenizer, info: TokenizerInfo):
        self.backend, self.info = backend, info
        self._template = _compile_template(info.chat_template) if info.chat_template else None
        self._bytes_alphabet = {c: b for b, c in byte_alphabet().items()}
        self._special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}

    # -- building and caching ----------------------------------------------------------------

    @classmethod
    def from_gguf_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        """From GGUF metadata values (key → python value), e.g. `gguf_loader.read_metadata`."""
        if fields.get("tokenizer.ggml.model") != "gpt2":
            raise NotImplementedError(f"tokenizer {fields.get('tokenizer.ggml.model')!r}: only byte-level BPE (gpt2)")
        tokens = fields["tokenizer.ggml.tokens"]
        token_types = fields.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        backend = build_bpe(tokens, fields["tokenizer.ggml.merges"], token_types, fields.get("tokenizer.ggml.pre", "gpt2"))
        stops = [i for i, (t, k) in enumerate(zip(tokens, token_types)) if k == CONTROL and t in _STOP_TOKENS]
        info = TokenizerInfo(
            chat_template=fields.get("tokenizer.chat_template"),
            bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
            pad_token_id=fields.get("tokenizer.ggml.padding_token_id"),
            add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
            extra_stop_token_ids=stops,
        )
        return cls(backend, info)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        (directory / "tokenizer_info.json").write_text(json.dumps(asdict(self.info), ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        info = TokenizerInfo(**json.loads((directory / "tokenizer_info.json").read_text()))
        return cls(HFTokenizer.from_file(str(directory / "tokenizer.json")), info)

    # -- text ↔ ids ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.info.eos_token_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end a reply: eos plus end-of-turn tokens like <|im_end|> and <|endoftext|>."""
        ids = set(self.info.extra_stop_token_ids)
        if self.info.eos_token_id is not None:
            ids.add(self.info.eos_token_id)
        return frozenset(ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token text such as <|im_start|> becomes its single id."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.info.add_bos_token and self.info.bos_token_id is not None:
            ids = [self.info.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token: for logprobs, and for streaming text that a token
        boundary may cut in the middle of a UTF-8 character."""
        token = self.backend.id_to_token(token_id)
        if token is None:
            return b""
        if token_id in self._special_ids or any(c not in self._bytes_alphabet for c in token):
            return token.encode("utf-8")  # added tokens are stored as plain text
        return bytes(self._bytes_alphabet[c] for c in token)

    # -- chat --------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": str}, ...])."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        bos = self.id_to_token(self.info.bos_token_id) if self.info.bos_token_id is not None else ""
        eos = self.id_to_token(self.info.eos_token_id) if self.info.eos_token_id is not None else ""
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
            **extra,
        )

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, tokenize: bool = True, **extra: Any
    ) -> list[int] | str:
        """Like transformers': the prompt's token ids (or its text with tokenize=False)."""
        text = self.render_chat(messages, add_generation_prompt, **extra)
        return self.encode(text) if tokenize else text


_STOP_TOKENS = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"}


def _compile_template(source: str):
    # The same environment transformers renders chat templates in: sandboxed, trimmed blocks.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message: str):
        raise ValueError(f"chat template error: {message}")

    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
