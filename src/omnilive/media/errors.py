"""The one error every media step raises, carrying what the server needs for an HTTP answer."""

from __future__ import annotations

from typing import Literal

MediaErrorCode = Literal[
    "invalid_image",
    "invalid_audio",
    "invalid_video",
    "invalid_data_url",
    "unsupported_format",
    "media_too_large",
    "empty_media",
    "too_long",
    "remote_url_not_allowed",
    "fetch_failed",
]

# too large answers 413 (Payload Too Large); every other bad input is the client's 400
_HTTP_STATUS = {"media_too_large": 413}


class MediaError(Exception):
    """A media item that cannot be used: the server maps it to `http_status` with this message."""

    def __init__(self, message: str, code: MediaErrorCode, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param  # which request field held the bad item, e.g. "messages[0].content[1]"
        self.http_status = _HTTP_STATUS.get(code, 400)

    def with_param(self, param: str) -> MediaError:
        """The same error pointing at `param` (decoders do not know where their bytes came from)."""
        return MediaError(self.message, self.code, param)

    def __repr__(self) -> str:
        return f"MediaError({self.message!r}, code={self.code!r}, param={self.param!r})"
