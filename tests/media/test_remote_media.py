"""Remote media URLs, when allowed, never reach private, loopback or link-local addresses (SSRF):
refused before any connection, also when a name resolves to such an address."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from omnilive.media.data_url import load_media_url
from omnilive.media.errors import MediaError
from omnilive.media.limits import MediaLimits
from omnilive.media.remote import public_address

ALLOWED = MediaLimits(allow_remote_urls=True, fetch_timeout_s=5)


@pytest.fixture
def local_http_server():
    """An HTTP server on 127.0.0.1 that records every request it gets (there must be none)."""
    hits: list[str] = []

    class Recording(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n")

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hits
    server.shutdown()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_loopback_is_refused_without_connecting(local_http_server, host):
    port, hits = local_http_server
    with pytest.raises(MediaError) as refused:
        asyncio.run(load_media_url(f"http://{host}:{port}/cat.png", ALLOWED))
    assert refused.value.code == "remote_url_not_allowed", refused.value.message
    assert hits == []


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "fe80::1", "fc00::1", "224.0.0.1"])
def test_private_link_local_and_special_addresses_are_refused(address):
    with pytest.raises(MediaError) as refused:
        asyncio.run(public_address(address, 80))
    assert refused.value.code == "remote_url_not_allowed"


def test_a_public_address_is_allowed_and_credentials_are_not_urls():
    assert asyncio.run(public_address("8.8.8.8", 443)) == "8.8.8.8"  # a literal address: no DNS needed
    with pytest.raises(MediaError) as refused:
        asyncio.run(load_media_url("http://user:pw@127.0.0.1/x.png", ALLOWED))
    assert refused.value.code == "remote_url_not_allowed"
