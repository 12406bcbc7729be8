"""Everything an operator can set, from the environment (OMNILIVE_*) or the CLI (flags win).

    OMNILIVE_PORT=9000 OMNILIVE_API_KEY=secret omnilive serve --llm smollm2-135m
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from omnilive.media.limits import MediaLimits


def pair_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"a stage's replica count must be a number, not {text!r}") from None


def _default_data_dir() -> Path:
    """$XDG_DATA_HOME/omnilive, else ~/.local/share/omnilive."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "omnilive"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNILIVE_", extra="ignore", validate_default=True)

    # Every field's description is its line in docs/configuration.md (scripts/configuration_doc.py
    # renders it; tests/server/test_configuration_doc.py keeps the two in sync).

    # what to serve
    model: str = Field("default", description=(
        '"default" = the embedded cascade of packaged models; or a Qwen2.5-Omni checkpoint directory, '
        "or a hub id (owner/name)"))
    llm: Literal["qwen2.5-coder-0.5b", "smollm2-135m"] = Field("qwen2.5-coder-0.5b", description=(
        "LLM of the embedded default model: smollm2-135m is lighter and weaker"))
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        'model weights\' dtype; "auto" = bfloat16 where the hardware computes it natively '
        "(AVX512-BF16 / AMX CPUs, GPUs), else float32"))

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    # SecretStr: never printed in logs or reprs
    api_key: SecretStr | None = Field(None, description=(
        "one admin key for one-person setups: `Authorization: Bearer <api_key>` on /v1 routes, beside the "
        "keys of users made with `omnilive users`; with neither, the server is open. /health, /metrics and "
        "the web app's static files stay open (a load balancer and Prometheus need them)"))
    cors_origins: Annotated[list[str], NoDecode] = Field([], description=(
        'browser origins allowed to call the API: "*" for any, or a comma-separated list '
        "(the flag: once per origin); empty = no cross-origin requests"))
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description=(
        "log level of omnilive and uvicorn"))

    data_dir: Path = Field(default_factory=_default_data_dir, description=(
        "uploaded files, the SQLite history database and (unless OMNILIVE_CACHE_DIR is set) the model cache "
        "live here"))
    cache_dir: Path | None = Field(None, description=(
        "assembled model files (joined packaged parts, dequantised weights); unset = DATA_DIR/models. "
        "Worth sharing between data dirs: building it costs tens of seconds"))
    database_url: str | None = Field(None, description=(
        "history database, e.g. `postgresql://user@host/db`; unset = the SQLite file DATA_DIR/omnilive.db"))

    # scale-out on Ray Serve (docs/scale-out.md)
    ray: bool = Field(False, description=(
        "serve through Ray Serve: the same API on HOST:PORT, answered by REPLICAS copies of the backend"))
    ray_address: str | None = Field(None, description=(
        'Ray cluster to join: "auto" (the one `ray start` made on this machine) or HOST:PORT of its head; '
        "unset = start a local Ray cluster"))
    replicas: int = Field(1, ge=1, description=(
        "with --ray: copies of the backend, each with its own engine (and THREADS CPUs of the cluster); "
        "with autoscaling, the replicas to start with"))
    gpus_per_replica: float = Field(0.0, ge=0, description=(
        "with --ray: GPUs each replica asks Ray for (thinker and speech replicas alike): 1 pins a replica to "
        "its own GPU (Ray sets its CUDA_VISIBLE_DEVICES), 0.5 lets two share one; 0 = CPUs only"))
    min_replicas: int | None = Field(None, ge=0, description=(
        "with --ray: autoscaling's fewest replicas (unset = REPLICAS when MAX_REPLICAS is set); Ray Serve "
        "adds and removes replicas between MIN_REPLICAS and MAX_REPLICAS by their ongoing requests"))
    max_replicas: int | None = Field(None, ge=1, description=(
        "with --ray: autoscaling's most replicas; setting it turns autoscaling on (unset = a fixed REPLICAS)"))
    target_ongoing_requests: float = Field(2.0, gt=0, description=(
        "with --ray and autoscaling: requests per replica (running or queued in it) that Ray Serve scales "
        "towards; an engine batches MAX_BATCH, so about MAX_BATCH keeps replicas busy"))
    stages: Annotated[dict[str, int], NoDecode] = Field({}, description=(
        'with --ray and a model that speaks (Qwen2.5-Omni, Qwen3-Omni): the thinker and the speech stage '
        '(talker + vocoder) as separate deployments with their own replica counts, e.g. "thinker=2,speech=1"; the '
        "thinker count replaces REPLICAS; empty = every replica runs the whole model"))

    # engine sizing
    max_batch: int = Field(4, ge=1, description="requests decoded together (decode slots batched in one step)")
    max_context_tokens: int = Field(8192, ge=256, description=(
        "context per slot, in tokens (capped at the model's own maximum)"))
    threads: int = Field(2, ge=1, description="CPU threads for the models")
    prefill_chunk_tokens: int = Field(64, ge=1, description=(
        "prompt tokens computed per engine step: smaller keeps other streams flowing during a long "
        "prompt, larger finishes the prompt sooner"))
    quantize: Literal["auto", "gguf", "int8", "none"] = Field("auto", description=(
        'How the embedded LLM holds its linear weights. "gguf": the GGUF file\'s own 4/5/6/8-bit '
        "values, multiplied by omnilive's C++ kernel (AVX2 or AVX-512 VNNI; compiled with gcc on the "
        "first start, then cached): the fastest decode on CPUs and the least memory (docs/benchmarks.md). "
        '"int8": int8 weights in a bf16 model. "none": the dequantised weights in --dtype. "auto" = '
        '"gguf" plus a float copy of the decoder\'s weights (bf16 on AMX CPUs, else float32: 0.7-1.4 GB) '
        "on which prompt tokens run, several times faster than on the kernel, where the kernel builds "
        "and runs; else bf16 packed for oneDNN where the CPU runs bf16 natively (AMX / AVX512-BF16), "
        "else int8 on other CPUs running bfloat16. For a Qwen3-Omni "
        'checkpoint, "int8" holds the thinker\'s and the talker\'s MoE experts (nearly all their weights) in '
        "int8 with one scale per output channel: about half the memory of bf16 (docs/models.md); any other value "
        "keeps them in --dtype"))
    # bench/speech_quality.py prints the log-mel cost of each speech setting against the 10-step
    # float32 reference.
    token2wav_steps: int = Field(10, ge=2, description=(
        "native Qwen2.5-Omni speech: token2wav's ODE steps (10 = the reference)"))
    token2wav_first_chunk_steps: int = Field(4, ge=2, description=(
        "native speech: ODE steps for the first streamed window only (its 0.12 s of audio; later "
        "windows re-solve those frames with every step), for an earlier first audio chunk"))
    speech_dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        'native speech: dtype of the streamed DiT solves (Qwen2.5-Omni) and of Code2Wav (Qwen3-Omni); "auto" = '
        "for the DiT bfloat16 when the model runs in bfloat16 on a GPU or an AMX CPU, else float32; for "
        "Code2Wav float32 (bfloat16 is 3-10x faster on AMX CPUs, its quality on real weights not yet measured: "
        "docs/models.md)"))
    speech_lead_seconds: float = Field(1.5, ge=0.0, description=(
        "native speech: seconds of audio a stream keeps ahead of its listener before its next "
        "token2wav window must be solved; until then windows wait to be solved together with other "
        "streams'"))
    code2wav_chunk_frames: int = Field(8, ge=1, description=(
        "native Qwen3-Omni speech: codec frames (12.5 a second) per streamed Code2Wav decode; the "
        "stream is exact, so the size trades per-call overhead against latency, never quality"))
    code2wav_first_chunk_frames: int = Field(2, ge=1, description=(
        "native Qwen3-Omni speech: codec frames of a reply's first Code2Wav decode, for an earlier "
        "first audio chunk"))
    reasoning_answer_phrase: str = Field("auto", description=(
        'native models that reason in plain text (no think tokens): the phrase that starts the answer; the '
        'reply before it is reasoning and the thinking budget forces it. "auto" = by checkpoint: '
        '"**Final Answer**" for QVQ (its name in config.json `_name_or_path` or its directory), none for '
        'others; "none" = off; any other text = that phrase'))
    media_cache_mb: int = Field(256, ge=0, description=(
        "native models: MB of encoder outputs of recent images / audios / videos, kept so that the "
        "same media sent again (the earlier turns of a chat) is not encoded again; 0 turns it off"))

    # request and media bounds
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description=(
        "largest HTTP request body, in bytes (also bounds a realtime WebSocket event)"))
    max_media_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="largest image / audio / video item, in bytes")
    max_audio_seconds: float = Field(600.0, gt=0, description="longest audio input, in seconds")
    max_video_seconds: float = Field(180.0, gt=0, description="longest video input, in seconds")
    max_speech_input_chars: int = Field(4096, ge=1, description=(
        "longest text for /v1/audio/speech, in characters (as OpenAI)"))
    allow_remote_media_urls: bool = Field(False, description=(
        "let clients make this server fetch media from http(s) URLs"))

    realtime_max_events_per_second: float = Field(500.0, ge=0, description=(
        "client events a realtime WebSocket may send per second on average (twice that at once); faster "
        "senders are read more slowly, not refused (0 = no limit)"))
    drain_seconds: float = Field(30.0, ge=0, le=3600, description=(
        "on SIGTERM, seconds that requests in flight (streams included) get to finish while new ones get 503; "
        "then the server stops (0 = stop at once)"))

    # users, keys and quotas (docs/security.md); users themselves live in the database: `omnilive users`
    auth_cache_seconds: float = Field(10.0, ge=0, le=3600, description=(
        "seconds a verified user key is trusted without asking the database again; a key revoked with "
        "`omnilive users revoke` stops working within this time (through /v1/admin/users at once)"))
    admin_reads_conversations: bool = Field(False, description=(
        "let admins read users' conversations through /v1/admin/users/NAME/conversations; off, admins "
        "manage users and see usage but read no one's chats"))
    quota_requests_per_minute: int = Field(0, ge=0, description=(
        "default per-user limit on /v1 requests per minute (0 = none); over it: 429 with Retry-After"))
    quota_tokens_per_minute: int = Field(0, ge=0, description=(
        "default per-user limit on prompt + completion tokens per minute (0 = none)"))
    quota_concurrent_streams: int = Field(0, ge=0, description=(
        "default per-user limit on generations running at once: chat completions, speech, "
        "transcriptions, realtime sessions (0 = none)"))
    quota_upload_bytes_per_day: int = Field(0, ge=0, description=(
        "default per-user limit on bytes uploaded to /v1/files and /v1/history/media in 24 hours (0 = none)"))

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, value):
        """ "thinker=2,speech=1" → {"thinker": 2, "speech": 1}; both stages must be named."""
        if isinstance(value, str):
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f'stages must look like "thinker=2,speech=1", not {value!r}')
            value = {name.strip(): pair_count(count) for name, count in pairs}
        if value and set(value) != {"thinker", "speech"}:
            raise ValueError(f"stages must name exactly thinker and speech, not {sorted(value)}")
        if any(count < 1 for count in value.values()):
            raise ValueError("each stage needs at least one replica")
        return value

    @model_validator(mode="after")
    def _replica_range(self):
        low = self.replicas if self.min_replicas is None else self.min_replicas
        if self.max_replicas is not None and low > self.max_replicas:
            raise ValueError(f"min replicas ({low}) is above max replicas ({self.max_replicas})")
        return self

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand_dirs(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @property
    def autoscaling(self) -> dict | None:
        """Ray Serve's autoscaling_config, or None for a fixed number of replicas."""
        if self.max_replicas is None:
            return None
        low = self.replicas if self.min_replicas is None else self.min_replicas
        return {"min_replicas": low, "max_replicas": self.max_replicas,
                "initial_replicas": min(max(self.replicas, low), self.max_replicas),
                "target_ongoing_requests": self.target_ongoing_requests}

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
