"""Files, batches and batch lines in the durable store (synchronous SQLAlchemy).

Every method is one transaction. The guarantees the batch API makes live here:
- a line's result is written by `UPDATE ... WHERE state = 'pending'`, so it is recorded
  once even if two runners raced on it; counters move by the rows that update changed;
- a runner works on a batch only while it holds the batch's lease (`claim`, `renew`);
  a runner that died stops renewing, and another takes the batch over after `lease_s`;
- output files are written under ids derived from the batch id, so finalizing again
  after a crash overwrites the same blobs instead of adding new ones.
Callers in async code run these methods in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from serving.store.blobs import BlobStore
from serving.store.tables import BatchLineRow, BatchRow, FileRow

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
WINDOW_S = {"24h": 24 * 3600}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


@dataclass
class LineResult:
    """A finished line, ready to commit."""

    line: int
    status_code: int | None  # None: the line never reached the pipeline
    output: dict[str, Any]  # the output-file line
    usage: dict[str, Any] | None = None  # the answer's usage (tokens, cost)


class NotFound(Exception):
    pass


class BatchStore:
    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore) -> None:
        self.sessions = sessions
        self.blobs = blobs

    # --- files --------------------------------------------------------------------

    def create_file(self, owner: str, purpose: str, filename: str, source: BinaryIO,
                    file_id: str | None = None) -> FileRow:
        fresh = file_id is None
        file_id = file_id or new_id("file-")
        size = self.blobs.put(file_id, source)  # bytes first: no row without its bytes
        row = FileRow(id=file_id, owner=owner, purpose=purpose,
                      filename=filename.replace("\x00", "")[:512],
                      bytes=size, created_at=int(time.time()))
        try:
            with self.sessions.begin() as session:
                return session.merge(row)
        except Exception:
            if fresh:  # nobody can name these bytes; a derived id's row may exist already
                with contextlib.suppress(Exception):
                    self.blobs.delete(file_id)
            raise

    def get_file(self, owner: str, file_id: str) -> FileRow:
        with self.sessions() as session:
            row = session.get(FileRow, file_id) if _storable_id(file_id) else None
        if row is None or row.owner != owner:
            raise NotFound(file_id)
        return row

    def list_files(self, owner: str, purpose: str | None, limit: int, after: str | None,
                   ascending: bool) -> tuple[list[FileRow], bool]:
        with self.sessions() as session:
            query = select(FileRow).where(FileRow.owner == owner)
            if purpose:
                query = query.where(FileRow.purpose == purpose)
            query = _page(query, FileRow, session, after, ascending)
            rows = list(session.scalars(query.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def delete_file(self, owner: str, file_id: str) -> None:
        with self.sessions.begin() as session:
            row = session.get(FileRow, file_id) if _storable_id(file_id) else None
            if row is None or row.owner != owner:
                raise NotFound(file_id)
            session.delete(row)
        self.blobs.delete(file_id)

    def file_bytes(self, owner: str, file_id: str) -> Iterator[bytes]:
        self.get_file(owner, file_id)
        return self.blobs.iter_bytes(file_id)

    # --- batches --------------------------------------------------------------------

    def create_batch(self, owner: str, input_file_id: str, endpoint: str, window: str,
                     metadata: dict[str, str] | None) -> BatchRow:
        now = int(time.time())
        row = BatchRow(
            id=new_id("batch_"), owner=owner, endpoint=endpoint, input_file_id=input_file_id,
            completion_window=window, status="validating", metadata_=metadata,
            created_at=now, expires_at=now + WINDOW_S[window], total=0, completed=0,
            failed=0, input_tokens=0, cached_tokens=0, output_tokens=0,
            reasoning_tokens=0, cost_usd=0.0, saved_usd=0.0, lease_until=0.0,
        )
        with self.sessions.begin() as session:
            session.add(row)
        return row

    def get_batch(self, owner: str | None, batch_id: str) -> BatchRow:
        with self.sessions() as session:
            row = session.get(BatchRow, batch_id) if _storable_id(batch_id) else None
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(batch_id)
        return row

    def list_batches(self, owner: str, limit: int, after: str | None
                     ) -> tuple[list[BatchRow], bool]:
        with self.sessions() as session:
            query = select(BatchRow).where(BatchRow.owner == owner)
            query = _page(query, BatchRow, session, after, ascending=False)
            rows = list(session.scalars(query.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def cancel_batch(self, owner: str, batch_id: str) -> BatchRow:
        """Ask a batch to stop: the runner finishes the lines in flight, then writes what
        is done. A batch already ended stays as it is (OpenAI's behaviour)."""
        with self.sessions.begin() as session:
            row = session.get(BatchRow, batch_id) if _storable_id(batch_id) else None
            if row is None or row.owner != owner:
                raise NotFound(batch_id)
            if row.status in ("validating", "in_progress"):
                row.status = "cancelling"
                row.cancelling_at = int(time.time())
            return row

    # --- the runner's side ------------------------------------------------------------

    def claim(self, runner: str, lease_s: float, limit: int) -> list[str]:
        """Take the leases of up to `limit` active batches that no live runner holds.

        One statement, `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
        RETURNING id`, so a batch is leased to one runner however many claim at once. On
        PostgreSQL, replicas claiming together neither wait for each other nor take the
        same batch: a row another claim has locked is skipped, and locking re-checks the
        lease on the row's newest version. SQLite has no FOR UPDATE (none is rendered):
        the UPDATE holds the database's one write lock from its start, so the subquery
        sees every committed lease.
        """
        now = time.time()
        free = or_(BatchRow.lease_owner.is_(None), BatchRow.lease_until < now,
                   BatchRow.lease_owner == runner)
        candidates = (
            select(BatchRow.id).where(BatchRow.status.in_(ACTIVE), free)
            .order_by(BatchRow.created_at, BatchRow.id).limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.sessions.begin() as session:
            claimed = session.scalars(
                update(BatchRow).where(BatchRow.id.in_(candidates), free)
                .values(lease_owner=runner, lease_until=now + lease_s)
                .returning(BatchRow.id)
                .execution_options(synchronize_session=False)
            ).all()
        return list(claimed)

    def renew(self, runner: str, batch_id: str, lease_s: float) -> bool:
        """Extend this runner's lease; False when another runner took the batch over."""
        with self.sessions.begin() as session:
            return bool(session.execute(
                update(BatchRow).where(BatchRow.id == batch_id, BatchRow.lease_owner == runner)
                .values(lease_until=time.time() + lease_s)
            ).rowcount)

    def release(self, runner: str, batch_id: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(BatchRow).where(BatchRow.id == batch_id, BatchRow.lease_owner == runner)
                .values(lease_owner=None, lease_until=0.0)
            )

    def start_batch(self, batch_id: str, lines: list[BatchLineRow],
                    early_results: list[LineResult]) -> None:
        """Validation passed: store every line (pending, or done when it was malformed)
        and move the batch to in_progress, in one transaction."""
        with self.sessions.begin() as session:
            row = session.get(BatchRow, batch_id)
            if row is None or row.status != "validating":
                return  # cancelled meanwhile, or another runner did it
            session.add_all(lines)
            for result in early_results:
                session.add(BatchLineRow(
                    batch_id=batch_id, line=result.line,
                    custom_id=_column_text(result.output["custom_id"], 512),
                    request=None, state="done", status_code=None,
                    result=json.dumps(result.output), attempts=0,
                ))
            row.total = len(lines) + len(early_results)
            row.failed = len(early_results)
            row.status = "in_progress"
            row.in_progress_at = int(time.time())

    def fail_batch(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        """Validation failed as a whole (too many lines, duplicate custom_id, ...)."""
        with self.sessions.begin() as session:
            row = session.get(BatchRow, batch_id)
            if row is None or row.status not in ("validating", "cancelling"):
                return
            row.status = "failed"
            row.failed_at = int(time.time())
            row.errors = errors

    def pending_lines(self, batch_id: str, limit: int, after_line: int) -> list[BatchLineRow]:
        """The next pending lines after `after_line`, each counted as attempted once."""
        with self.sessions.begin() as session:
            rows = list(session.scalars(
                select(BatchLineRow).where(
                    BatchLineRow.batch_id == batch_id, BatchLineRow.state == "pending",
                    BatchLineRow.line > after_line,
                ).order_by(BatchLineRow.line).limit(limit)
            ))
            if rows:
                session.execute(
                    update(BatchLineRow).where(
                        BatchLineRow.batch_id == batch_id,
                        BatchLineRow.line.in_([r.line for r in rows]),
                    ).values(attempts=BatchLineRow.attempts + 1)
                )
        return rows

    def count_pending(self, batch_id: str) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(BatchLineRow).where(
                BatchLineRow.batch_id == batch_id, BatchLineRow.state == "pending")) or 0

    def commit_results(self, batch_id: str, results: Iterable[LineResult]) -> int:
        """Record finished lines, each only if still pending. Returns how many were new.

        One transaction, two statements whatever the count: an UPDATE ... RETURNING
        marks done the lines still pending and names them (an answer for a line done
        already is a duplicate: dropped and counted), and one executemany writes their
        answers. A row-by-row ORM update cost the gateway more CPU than the engine call."""
        results = list(results)
        if not results:
            return 0
        lines = BatchLineRow.__table__
        by_line = {result.line: result for result in results}
        with self.sessions.begin() as session:
            claimed = session.scalars(
                update(lines).where(
                    lines.c.batch_id == batch_id, lines.c.line.in_(list(by_line)),
                    lines.c.state == "pending",
                ).values(state="done").returning(lines.c.line)
            ).all()
            fresh = [by_line[number] for number in claimed]
            if fresh:
                session.execute(
                    update(lines).where(lines.c.batch_id == batch_id,
                                        lines.c.line == bindparam("b_line"))
                    .values(status_code=bindparam("b_status"), result=bindparam("b_result")),
                    [{"b_line": r.line, "b_status": r.status_code,
                      "b_result": json.dumps(r.output)} for r in fresh],
                )
            counts = {"completed": 0, "failed": 0}
            tokens = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0,
                      "reasoning_tokens": 0, "cost_usd": 0.0, "saved_usd": 0.0}
            for result in fresh:
                counts["completed" if result.status_code == 200 else "failed"] += 1
                _add_usage(tokens, result.usage)
            changes = {**counts, **tokens, "duplicate_results": len(results) - len(fresh)}
            session.execute(update(BatchRow).where(BatchRow.id == batch_id).values(
                **{k: getattr(BatchRow, k) + v for k, v in changes.items()}
            ))
        return len(fresh)

    def status(self, batch_id: str) -> str:
        with self.sessions() as session:
            return session.scalar(select(BatchRow.status).where(BatchRow.id == batch_id)) or ""

    def begin_finalizing(self, batch_id: str) -> None:
        with self.sessions.begin() as session:
            session.execute(update(BatchRow).where(
                BatchRow.id == batch_id, BatchRow.status == "in_progress",
            ).values(status="finalizing", finalizing_at=int(time.time())))

    def finalize(self, batch_id: str, unfinished_code: str | None) -> str:
        """Write the output and error files from the line rows and end the batch.

        `unfinished_code` (batch_cancelled, batch_expired) marks lines still pending as
        errors with that code; None means none should be left. Returns the final status.
        """
        batch = self.get_batch(None, batch_id)
        final = {"batch_cancelled": "cancelled", "batch_expired": "expired"}.get(
            unfinished_code or "", "completed")
        out, err = io.BytesIO(), io.BytesIO()
        unfinished = 0
        with self.sessions() as session:
            rows = session.scalars(select(BatchLineRow).where(
                BatchLineRow.batch_id == batch_id).order_by(BatchLineRow.line))
            for row in rows:
                if row.state == "done":
                    target = out if row.status_code == 200 else err
                    target.write(row.result.encode() + b"\n")
                elif unfinished_code is not None:
                    unfinished += 1
                    err.write(json.dumps(unfinished_line(row, unfinished_code)).encode() + b"\n")
        output_id = error_id = None
        if out.tell():
            out.seek(0)
            output_id = self.create_file(batch.owner, "batch_output",
                                         f"{batch_id}_output.jsonl", out,
                                         file_id=f"file-{batch_id}-output").id
        if err.tell():
            err.seek(0)
            error_id = self.create_file(batch.owner, "batch_output",
                                        f"{batch_id}_error.jsonl", err,
                                        file_id=f"file-{batch_id}-errors").id
        now = int(time.time())
        with self.sessions.begin() as session:
            row = session.get(BatchRow, batch_id)
            row.output_file_id, row.error_file_id = output_id, error_id
            row.failed += unfinished
            row.status = final
            setattr(row, f"{final}_at", now)
            row.lease_owner, row.lease_until = None, 0.0
        return final


def _storable_id(value: str) -> bool:
    """Whether an id from a client can name a row at all. PostgreSQL refuses a NUL in a
    query parameter outright (a 500 instead of a 404), so such ids are not looked up."""
    return len(value) <= 64 and "\x00" not in value


def _column_text(value: str | None, length: int) -> str | None:
    """`value` if every database can store it in a String(length) column, else None.

    A line that failed validation may carry any custom_id (too long, NUL characters:
    PostgreSQL refuses both, SQLite takes them); its output line keeps the original,
    the column is only read for lines still pending."""
    if value is None or len(value) > length or "\x00" in value:
        return None
    return value


def unfinished_line(row: BatchLineRow, code: str) -> dict[str, Any]:
    message = {"batch_expired": "This line was not executed before the batch expired.",
               "batch_cancelled": "This line was not executed: the batch was cancelled."}
    return {"id": f"batch_req_{row.batch_id[6:]}_{row.line}", "custom_id": row.custom_id,
            "response": None, "error": {"code": code, "message": message[code]}}


def _add_usage(tokens: dict[str, float], usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    tokens["input_tokens"] += usage.get("prompt_tokens") or 0
    tokens["output_tokens"] += usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    tokens["cached_tokens"] += details.get("cached_tokens") or 0
    out_details = usage.get("completion_tokens_details") or {}
    tokens["reasoning_tokens"] += out_details.get("reasoning_tokens") or 0
    cost = usage.get("cost") or {}
    tokens["cost_usd"] += cost.get("total_usd") or 0.0
    tokens["saved_usd"] += (cost.get("saved_by_lever") or {}).get("batch") or 0.0


def _page(query, table, session: Session, after: str | None, ascending: bool):  # noqa: ANN001
    """Cursor paging by (created_at, id), as OpenAI's `after` cursors."""
    order = (table.created_at.asc(), table.id.asc()) if ascending else (
        table.created_at.desc(), table.id.desc())
    if after and _storable_id(after):
        anchor = session.get(table, after)
        if anchor is not None:
            if ascending:
                query = query.where(or_(table.created_at > anchor.created_at, and_(
                    table.created_at == anchor.created_at, table.id > anchor.id)))
            else:
                query = query.where(or_(table.created_at < anchor.created_at, and_(
                    table.created_at == anchor.created_at, table.id < anchor.id)))
    return query.order_by(*order)
