"""Back-ends behind the Backend interface (see omnilive.types)."""

from __future__ import annotations

from pathlib import Path


def load_backend(settings):
    """The engine `settings.model` names: "default" is the embedded cascade of packaged models."""
    if settings.model in ("default", "omnilive-small"):
        from omnilive.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings)
    if Path(settings.model).expanduser().is_dir() or settings.model.count("/") == 1:  # checkpoint dir or hub id
        from omnilive.backends.native_omni import NativeBackend

        return NativeBackend(settings)
    raise ValueError(
        f"model {settings.model!r}: not the embedded default ('default'), a checkpoint directory or a "
        "hub id (owner/name)"
    )
