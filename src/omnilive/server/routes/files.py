"""/v1/files: upload media once, then refer to it by id in chat messages.

    POST /v1/files (multipart: file, purpose)   GET /v1/files[?purpose=]   GET /v1/files/{id}
    GET /v1/files/{id}/content                  DELETE /v1/files/{id}

Handlers are plain functions: FastAPI runs them in its thread pool, off the event loop,
which suits their blocking disk I/O. Each caller sees only their own files (OwnedFiles); an
upload counts against its user's upload quota.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from omnilive.server.auth import principal_of
from omnilive.server.errors import APIError
from omnilive.server.files import OwnedFiles, StoredFile
from omnilive.server.responses import FileObject

router = APIRouter()

Purpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


def _store(request: Request) -> OwnedFiles:
    return files_of(request)


def files_of(request: Request) -> OwnedFiles:
    """The caller's files: what chat messages may refer to by file id."""
    return OwnedFiles(request.app.state.files, principal_of(request).owner)


def _object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id,
        bytes=stored.bytes,
        created_at=stored.created_at,
        filename=stored.filename,
        purpose=stored.purpose,
        content_type=stored.content_type,
    )


def _existing(request: Request, file_id: str) -> StoredFile:
    stored = _store(request).get(file_id)
    if stored is None:
        raise APIError(404, f"No such File object: {file_id}", "file_id", "file_not_found")
    return stored


@router.post("/v1/files")
def upload_file(
    request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[Purpose, Form()]
) -> FileObject:
    filename = file.filename or "upload"
    content_type = file.content_type
    if not content_type or content_type == "application/octet-stream":
        content_type = mimetypes.guess_type(filename)[0] or content_type
    request.app.state.quotas.admit_upload(principal_of(request), file.size or 0)  # or 429
    return _object(_store(request).create(file.file, filename, purpose, content_type))


@router.get("/v1/files")
def list_files(request: Request, purpose: str | None = None) -> dict:
    data = [_object(f).model_dump() for f in _store(request).list(purpose)]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/v1/files/{file_id}")
def retrieve_file(request: Request, file_id: str) -> FileObject:
    return _object(_existing(request, file_id))


@router.get("/v1/files/{file_id}/content")
def file_content(request: Request, file_id: str) -> FileResponse:
    stored = _existing(request, file_id)
    return FileResponse(
        _store(request).path(stored.id),
        media_type=stored.content_type or "application/octet-stream",
        filename=stored.filename,
    )


@router.delete("/v1/files/{file_id}")
def delete_file(request: Request, file_id: str) -> dict:
    _existing(request, file_id)
    _store(request).delete(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
