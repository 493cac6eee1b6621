"""The Files and Batches API's operations (OpenAI's shapes), for the gateway's routes.

Each operation checks its input, calls the store in a worker thread, and renders the
row with the `openai` SDK's own response model. The owner of every row is the caller's
key label: a key sees only its own files and batches. Errors are `APIError`s: a wrong
purpose or endpoint is 400, an unknown id 404, an upload over `batch.max_file_bytes`
413.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from openai.types import Batch, FileObject
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from serving.batch.models import FILE_PURPOSES, BatchCreate
from serving.batch.store import BatchStore, NotFound
from serving.config import BatchConfig
from serving.errors import APIError
from serving.pipeline.parse import read_json
from serving.store.tables import BatchRow, FileRow

MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries around the file itself


def file_object(row: FileRow) -> dict[str, Any]:
    return FileObject(
        id=row.id, object="file", bytes=row.bytes, created_at=row.created_at,
        filename=row.filename, purpose=row.purpose, status="processed",
    ).model_dump(exclude_none=False)


def batch_object(row: BatchRow) -> dict[str, Any]:
    errors = {"object": "list", "data": row.errors} if row.errors else None
    usage = {
        "input_tokens": row.input_tokens,
        "input_tokens_details": {"cached_tokens": row.cached_tokens},
        "output_tokens": row.output_tokens,
        "output_tokens_details": {"reasoning_tokens": row.reasoning_tokens},
        "total_tokens": row.input_tokens + row.output_tokens,
    }
    batch = Batch.model_validate({
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "errors": errors,
        "input_file_id": row.input_file_id, "completion_window": row.completion_window,
        "status": row.status, "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id, "created_at": row.created_at,
        "in_progress_at": row.in_progress_at, "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at, "completed_at": row.completed_at,
        "failed_at": row.failed_at, "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at, "cancelled_at": row.cancelled_at,
        "request_counts": {"total": row.total, "completed": row.completed,
                           "failed": row.failed},
        "metadata": row.metadata_, "model": row.model, "usage": usage,
    })
    body = batch.model_dump()
    # frugal's own: what the batch cost and what the batch discount saved (docs/batch.md).
    body["cost"] = {"total_usd": row.cost_usd, "saved_by_batch_usd": row.saved_usd}
    return body


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def _limit(value: str | None, default: int, top: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise APIError(400, "limit must be an integer", param="limit") from None
    if not 1 <= limit <= top:
        raise APIError(400, f"limit must be between 1 and {top}", param="limit")
    return limit


class BatchService:
    def __init__(self, store: BatchStore, config: BatchConfig) -> None:
        self.store = store
        self.config = config

    async def _run(self, fn: Any, *args: Any, what: str = "") -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except NotFound as exc:
            raise APIError(404, f"No such {what}: '{exc.args[0]}'",
                           param=what or None) from None

    # --- files ------------------------------------------------------------------------

    async def create_file(self, owner: str, raw: Request) -> dict[str, Any]:
        limit = self.config.max_file_bytes
        declared = raw.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
            raise APIError(413, f"file larger than the {limit}-byte limit", param="file")
        try:
            form = await raw.form(max_files=1, max_fields=8)
        except Exception as exc:  # not multipart, or malformed
            raise APIError(400, f"expected a multipart form with 'file' and 'purpose': "
                           f"{exc}") from None
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "missing the 'file' part", param="file")
        if purpose != "batch":
            raise APIError(400, f"purpose must be 'batch' (got {purpose!r})", param="purpose")
        if upload.size is not None and upload.size > limit:
            raise APIError(413, f"file larger than the {limit}-byte limit", param="file")
        row = await self._run(self.store.create_file, owner, purpose,
                              upload.filename or "upload.jsonl", upload.file)
        await upload.close()
        return file_object(row)

    async def list_files(self, owner: str, raw: Request) -> dict[str, Any]:
        params = raw.query_params
        purpose = params.get("purpose")
        if purpose and purpose not in FILE_PURPOSES:
            raise APIError(400, f"unknown purpose {purpose!r}", param="purpose")
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise APIError(400, "order must be 'asc' or 'desc'", param="order")
        rows, more = await self._run(
            self.store.list_files, owner, purpose, _limit(params.get("limit"), 10000, 10000),
            params.get("after"), order == "asc")
        return _page([file_object(r) for r in rows], more)

    async def retrieve_file(self, owner: str, file_id: str) -> dict[str, Any]:
        return file_object(await self._run(self.store.get_file, owner, file_id, what="file"))

    async def file_content(self, owner: str, file_id: str) -> AsyncIterator[bytes]:
        chunks = await self._run(self.store.file_bytes, owner, file_id, what="file")

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return stream()

    async def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        await self._run(self.store.delete_file, owner, file_id, what="file")
        return {"id": file_id, "object": "file", "deleted": True}

    # --- batches ------------------------------------------------------------------------

    async def create_batch(self, owner: str, raw: Request) -> dict[str, Any]:
        body = read_json(await raw.body(), 1024 * 1024)
        try:
            params = BatchCreate.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError(400, f"{param}: {first['msg']}", param=param) from None
        source = await self._run(self.store.get_file, owner, params.input_file_id,
                                 what="input_file_id")
        if source.purpose != "batch":
            raise APIError(400, f"file {source.id} has purpose {source.purpose!r}, not "
                           "'batch'", param="input_file_id")
        row = await self._run(self.store.create_batch, owner, params.input_file_id,
                              params.endpoint, params.completion_window, params.metadata)
        return batch_object(row)

    async def retrieve_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        return batch_object(await self._run(self.store.get_batch, owner, batch_id,
                                            what="batch"))

    async def list_batches(self, owner: str, raw: Request) -> dict[str, Any]:
        params = raw.query_params
        rows, more = await self._run(self.store.list_batches, owner,
                                     _limit(params.get("limit"), 20, 100), params.get("after"))
        return _page([batch_object(r) for r in rows], more)

    async def cancel_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        return batch_object(await self._run(self.store.cancel_batch, owner, batch_id,
                                            what="batch"))
