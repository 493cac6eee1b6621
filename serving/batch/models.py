"""Shapes at the batch API's boundaries (pydantic): what clients send, what is stored.

Responses use the `openai` SDK's own models (`Batch`, `FileObject`), so the shapes are
OpenAI's by construction.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Line endpoints a batch can target, and the pipeline endpoint each runs on.
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
                   "/v1/responses": "chat"}  # translated into chat (serving/responses)
FILE_PURPOSES = ("batch", "batch_output")


class BatchCreate(BaseModel):
    """The body of `POST /v1/batches`."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
        if value is not None and (
            len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
        ):
            raise ValueError("metadata: at most 16 pairs, keys <= 64 and values <= 512 chars")
        return value


class InputLine(BaseModel):
    """One line of a batch input file (`{custom_id, method, url, body}`)."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]

    @field_validator("custom_id")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # PostgreSQL text cannot hold NUL; refuse it on every store alike.
        if "\x00" in value:
            raise ValueError("custom_id must not contain NUL characters")
        return value


class LineError(BaseModel):
    """A line that never reached the pipeline (bad JSON, bad envelope)."""

    code: str
    message: str
    line: int
    param: str | None = None
