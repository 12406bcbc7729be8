"""Back-ends behind the OmniEngine interface (see omnilive.engine.types)."""

from __future__ import annotations


def load_engine(settings):
    """The engine `settings.model` names: "default" is the embedded cascade of packaged models."""
    if settings.model in ("default", "omnilive-small"):
        from omnilive.backends.embedded import EmbeddedEngine

        return EmbeddedEngine(settings)
    raise ValueError(
        f"model {settings.model!r}: only the embedded default ('default') is available in this "
        "version; native Qwen2.5-Omni / Qwen2.5-VL checkpoints are not supported yet"
    )
