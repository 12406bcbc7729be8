"""Bytes of a media item from what a client sent: a data: URL, bare base64, or (if allowed) http(s).

Sizes are checked before decoding: base64 text is 4/3 the size of its bytes, so an oversized
item is refused without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes, urlsplit

from omnilive.media.errors import MediaError
from omnilive.media.limits import DEFAULT_LIMITS, MediaLimits

_WHITESPACE = re.compile(rb"\s+")


def too_large(size: int, max_bytes: int) -> MediaError:
    return MediaError(
        f"media item is {size / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB", "media_too_large"
    )


def decode_base64(text: str | bytes, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> bytes:
    """Standard or URL-safe base64, padding optional, line breaks allowed (as some clients send)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) * 3 // 4 > max_bytes + 3:  # the cheap pre-check: no allocation of the decoded bytes
        raise too_large(len(raw) * 3 // 4, max_bytes)
    raw = _WHITESPACE.sub(b"", raw).replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("media data is not valid base64", "invalid_data_url") from None
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise MediaError("media data is empty", "empty_media")
    return data


def parse_data_url(url: str, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> tuple[str | None, bytes]:
    """`data:<mime>[;params][;base64],<payload>` → (declared mime or None, bytes).

    The declared mime is only a hint: decoders sniff the bytes themselves.
    """
    if not url[:5].lower() == "data:":
        raise MediaError("expected a data: URL", "invalid_data_url")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise MediaError("malformed data: URL (no comma before the data)", "invalid_data_url")
    fields = [f.strip() for f in header.split(";")]
    mime = fields[0].lower() or None
    if mime is not None and "/" not in mime:
        raise MediaError(f"malformed data: URL (bad media type {fields[0][:40]!r})", "invalid_data_url")
    if any(f.lower() == "base64" for f in fields[1:]):
        return mime, decode_base64(payload, max_bytes)
    if len(payload) > 3 * max_bytes:  # percent-encoding at most triples the size
        raise too_large(len(payload) // 3, max_bytes)
    data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise MediaError("media data is empty", "empty_media")
    return mime, data


async def load_media_url(url: str, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[str | None, bytes]:
    """Any URL a client may put in image_url / video_url / audio_url → (declared mime, bytes)."""
    scheme = urlsplit(url).scheme.lower() if ":" in url[:12] else ""
    if scheme == "data":
        return parse_data_url(url, limits.max_bytes)
    if scheme in ("http", "https"):
        if not limits.allow_remote_urls:
            raise MediaError(
                "remote media URLs are disabled on this server; send the media inline as a data: URL",
                "remote_url_not_allowed",
            )
        from omnilive.media.remote import fetch_public  # httpx, only when remote fetching is on

        return await fetch_public(url, limits)
    raise MediaError(f"unsupported URL scheme {scheme or url[:16]!r}: use a data: URL", "invalid_data_url")
