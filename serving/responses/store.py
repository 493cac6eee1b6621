"""Stored responses in the durable store, so that `previous_response_id` works on every
gateway replica and after a restart (vLLM keeps them in its engine process: lost on
restart, and unknown to the other replicas). Sync; the service calls it in a thread."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from serving.store.tables import ResponseRow


class StoredResponse:
    def __init__(self, body: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.body = body
        self.history = history


class ResponseStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def save(self, response_id: str, owner: str, body: dict[str, Any],
             history: list[dict[str, Any]]) -> None:
        with self.sessions.begin() as session:
            session.merge(ResponseRow(id=response_id, owner=owner, created_at=int(time.time()),
                                      body=json.dumps(body), history=json.dumps(history)))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response if this caller owns it (another key's is as good as absent)."""
        with self.sessions() as session:
            row = session.get(ResponseRow, response_id)
            if row is None or row.owner != owner:
                return None
            return StoredResponse(json.loads(row.body), json.loads(row.history))

    def delete(self, response_id: str, owner: str) -> bool:
        with self.sessions.begin() as session:
            gone = session.execute(delete(ResponseRow).where(
                ResponseRow.id == response_id, ResponseRow.owner == owner))
            return gone.rowcount == 1
