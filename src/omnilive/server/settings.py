"""Everything an operator can set, from the environment (OMNILIVE_*) or the CLI (flags win).

    OMNILIVE_PORT=9000 OMNILIVE_API_KEY=secret omnilive serve --llm smollm2-135m
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from omnilive.media.limits import MediaLimits


def _default_data_dir() -> Path:
    """$XDG_DATA_HOME/omnilive, else ~/.local/share/omnilive."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "omnilive"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNILIVE_", extra="ignore", validate_default=True)

    # what to serve: "default" = the embedded cascade of packaged models; later a DIR or hub id
    model: str = "default"
    llm: Literal["qwen2.5-coder-0.5b", "smollm2-135m"] = "qwen2.5-coder-0.5b"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # when set, every /v1 route needs `Authorization: Bearer <api_key>`; /health, /metrics
    # and the web app's static files stay open (a load balancer and Prometheus need them)
    api_key: SecretStr | None = None  # SecretStr: never printed in logs or reprs
    cors_origins: Annotated[list[str], NoDecode] = []  # "*" or a comma-separated list
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    data_dir: Path = Field(default_factory=_default_data_dir)
    # assembled model files (joined packaged parts, dequantised weights); None = data_dir/models.
    # Worth sharing between data dirs: building it costs tens of seconds.
    cache_dir: Path | None = None
    database_url: str | None = None  # None = sqlite file under data_dir

    # engine sizing: decode slots batched together, context per slot, CPU threads
    max_batch: int = Field(4, ge=1)
    max_context_tokens: int = Field(8192, ge=256)
    threads: int = Field(2, ge=1)
    # prompt tokens computed per engine step: smaller keeps other streams flowing during a
    # long prompt, larger finishes the prompt sooner
    prefill_chunk_tokens: int = Field(64, ge=1)
    # int8 weights for the LLM's linear layers (measured top-1 agreement with bf16 at every
    # position): faster single-stream decode than plain bf16, slower than bf16 packed for
    # oneDNN once several requests batch. "auto" = packed bf16 where the CPU runs bf16
    # natively (AMX / AVX512-BF16), int8 on other CPUs running bfloat16
    quantize: Literal["auto", "int8", "none"] = "auto"
    # native Qwen2.5-Omni speech: token2wav's ODE steps (10 = the reference); fewer steps for
    # the first streamed window only (its 0.12 s of audio; later windows re-solve those frames
    # with every step), for an earlier first audio chunk; the streamed DiT solves' dtype
    # ("auto" = bfloat16 when the model runs in bfloat16 on a GPU or an AMX CPU, else float32).
    # bench/speech_quality.py prints the log-mel cost of each against the 10-step float32 reference.
    token2wav_steps: int = Field(10, ge=2)
    token2wav_first_chunk_steps: int = Field(4, ge=2)
    speech_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # seconds of audio a stream keeps ahead of its listener before its next token2wav window
    # must be solved; until then windows wait to be solved together with other streams'
    speech_lead_seconds: float = Field(1.5, ge=0.0)
    # native models: encoder outputs of recent images / audios / videos, kept so that the same
    # media sent again (the earlier turns of a chat) is not encoded again; 0 turns it off
    media_cache_mb: int = Field(256, ge=0)

    # request and media bounds
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # whole HTTP request body
    max_media_bytes: int = Field(25 * 1024 * 1024, ge=1024)  # one image/audio/video item
    max_audio_seconds: float = Field(600.0, gt=0)
    max_video_seconds: float = Field(180.0, gt=0)
    max_speech_input_chars: int = Field(4096, ge=1)  # /v1/audio/speech, as OpenAI
    allow_remote_media_urls: bool = False  # let clients make this server fetch http(s) URLs

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand_dirs(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @property
    def models_dir(self) -> Path:
        """Cache of assembled model files (joined packaged parts, converted weights)."""
        return self.cache_dir or self.data_dir / "models"

    @property
    def files_dir(self) -> Path:
        """Files uploaded through /v1/files."""
        return self.data_dir / "files"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'omnilive.db'}"

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_bytes=self.max_media_bytes,
            max_audio_seconds=self.max_audio_seconds,
            max_video_seconds=self.max_video_seconds,
            allow_remote_urls=self.allow_remote_media_urls,
        )
