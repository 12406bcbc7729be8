"""Back-ends behind the OmniEngine interface (see omnilive.types)."""

from __future__ import annotations

from pathlib import Path


def load_engine(settings):
    """The engine `settings.model` names: "default" is the embedded cascade of packaged models."""
    if settings.model in ("default", "omnilive-small"):
        from omnilive.backends.embedded import EmbeddedEngine

        return EmbeddedEngine(settings)
    if Path(settings.model).expanduser().is_dir() or settings.model.count("/") == 1:  # checkpoint dir or hub id
        from omnilive.backends.native_omni import NativeOmniEngine

        return NativeOmniEngine(settings)
    raise ValueError(
        f"model {settings.model!r}: not the embedded default ('default'), a checkpoint directory or a "
        "hub id (owner/name)"
    )
