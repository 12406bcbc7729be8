"""/v1/files through the official client: upload, list, retrieve, content, delete, use in chat."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image, ImageDraw, ImageFont


def text_image(text: str, size=(640, 160)) -> bytes:
    """Black text on white, large enough for OCR."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((24, 40), text, fill="black", font=ImageFont.load_default(size=64))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_upload_list_retrieve_content_delete(client, server):
    png = text_image("HELLO")
    uploaded = client.files.create(file=("hello.png", png, "image/png"), purpose="vision")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(png)
    assert uploaded.filename == "hello.png" and uploaded.purpose == "vision"

    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(uploaded.id).bytes == len(png)
    assert client.files.content(uploaded.id).content == png

    # crash safety by construction: the bytes and a JSON sidecar, nothing half-written
    files_dir = server.data_dir / "files"
    assert (files_dir / uploaded.id).read_bytes() == png
    assert json.loads((files_dir / f"{uploaded.id}.json").read_text())["filename"] == "hello.png"

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    assert uploaded.id not in [f.id for f in client.files.list()]
    assert not (files_dir / uploaded.id).exists()


def test_unknown_file_is_404(client, http):
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.files.retrieve("file-0123456789abcdef01234567")
    response = http.get("/v1/files/..%2F..%2Fetc%2Fpasswd/content")  # ids never name a path
    assert response.status_code == 404 and "error" in response.json()


def test_bad_purpose_is_400(http):
    response = http.post("/v1/files", files={"file": ("a.txt", b"abc")}, data={"purpose": "world-domination"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"


@pytest.mark.slow
def test_uploaded_image_used_in_chat(client, model_id):
    uploaded = client.files.create(file=("code.png", text_image("KIWI 4721"), "image/png"), purpose="vision")
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What text is written in this image? Reply with the text only."},
        {"type": "file", "file": {"file_id": uploaded.id}},
    ]}]
    answer = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=30)
    assert "4721" in answer.choices[0].message.content


def test_a_starting_store_sweeps_only_stale_leftovers(tmp_path):
    """Replicas share the files folder: one that starts must not delete another's upload in flight."""
    import os

    from omnilive.server.files import LEFTOVER_AGE_S, FileStore

    kept = FileStore(tmp_path).create(io.BytesIO(b"kept"), "a.txt", "user_data", "text/plain", owner="alice")
    fresh_part, old_part = tmp_path / f"file-{'1' * 24}.part", tmp_path / f"file-{'2' * 24}.part"
    fresh_orphan, old_orphan = tmp_path / f"file-{'3' * 24}", tmp_path / f"file-{'4' * 24}"
    for path in (fresh_part, old_part, fresh_orphan, old_orphan):
        path.write_bytes(b"x")
    long_ago = time.time() - LEFTOVER_AGE_S - 60
    for path in (old_part, old_orphan):
        os.utime(path, (long_ago, long_ago))

    store = FileStore(tmp_path)
    assert fresh_part.exists() and fresh_orphan.exists()  # maybe another replica is writing them
    assert not old_part.exists() and not old_orphan.exists()
    assert store.read(kept.id) == b"kept"
