"""Media from http(s) URLs, when the operator allows it, without letting a client reach private networks.

    mime, data = await fetch_public("https://example.com/cat.png", limits)

A client who may name URLs could otherwise make the server request its own admin ports, the
cloud metadata service (169.254.169.254) or the office network (SSRF). So every hop, the URL
and each redirect (at most 3), is resolved here, and refused unless every address it resolves
to is globally routable (not private, loopback, link-local, multicast, reserved, CGNAT or an
IPv4-mapped form of those). The request then goes to the address that was checked, with the
original Host header and TLS server name, so a DNS answer that changes between the check and
the connection (rebinding) cannot send it elsewhere. Size and time stay bounded as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

from omnilive.media.data_url import too_large
from omnilive.media.errors import MediaError
from omnilive.media.limits import MediaLimits

MAX_REDIRECTS = 3


async def fetch_public(url: str, limits: MediaLimits) -> tuple[str | None, bytes]:
    """GET `url` (following redirects, each checked) → (declared mime, bytes)."""
    import httpx  # only needed when remote fetching is enabled

    client = httpx.AsyncClient(timeout=limits.fetch_timeout_s, follow_redirects=False)
    try:
        async with asyncio.timeout(limits.fetch_timeout_s), client:
            for _ in range(MAX_REDIRECTS + 1):
                request = await _request_to_checked_address(client, url)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    return await _body(response, limits)
                finally:
                    await response.aclose()
            raise MediaError(f"fetching media failed: more than {MAX_REDIRECTS} redirects", "fetch_failed")
    except TimeoutError:
        raise MediaError(f"fetching media took over {limits.fetch_timeout_s:g} s", "fetch_failed") from None
    except httpx.HTTPError as e:
        raise MediaError(f"fetching media failed: {type(e).__name__}", "fetch_failed") from None


async def public_address(host: str, port: int) -> str:
    """The address to connect to for `host`, if every address it resolves to is public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise MediaError(f"fetching media failed: cannot resolve {host!r}", "fetch_failed") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise MediaError(f"media URLs may not point at private, loopback or link-local addresses "
                             f"({host} is {address})", "remote_url_not_allowed")
    if not addresses:
        raise MediaError(f"fetching media failed: {host!r} has no address", "fetch_failed")
    return addresses[0]


async def _request_to_checked_address(client, url: str):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError(f"media URLs must be http(s) URLs with a host (got {url[:60]!r})", "invalid_data_url")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = await public_address(parts.hostname, port)
    host_in_url = f"[{address}]" if ":" in address else address
    pinned = parts._replace(netloc=f"{host_in_url}:{port}").geturl()
    host_header = parts.netloc.rsplit("@", 1)[-1]  # never forward credentials in the URL
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return client.build_request("GET", pinned, headers={"Host": host_header}, extensions=extensions)


async def _body(response, limits: MediaLimits) -> tuple[str | None, bytes]:
    if response.status_code != 200:
        raise MediaError(f"fetching media failed: HTTP {response.status_code}", "fetch_failed")
    length = response.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else 0
    if declared > limits.max_bytes:
        raise too_large(declared, limits.max_bytes)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large(size, limits.max_bytes)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise MediaError("fetched media is empty", "empty_media")
    mime = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
    return mime, data
