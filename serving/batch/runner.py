"""The batch runner: claims batches, runs their lines through the request pipeline in
this process, and commits each line's result exactly once.

One runner lives in each gateway replica. It holds a lease on each batch it works on and
renews it; a replica that dies stops renewing, and a runner elsewhere (or the restarted
server) takes the batch over after `batch.lease_s`. Lines run through `Pipeline.run`,
exactly as online requests do, at batch priority (no HTTP hop per line); how many run at
once is `BatchAdmission`'s decision. Results are committed in groups every 100 ms; a
crash loses at most the uncommitted lines in flight, which are pending again and run
again after the restart: every line ends up in the output or error file exactly once.

A store that cannot take writes (disk full, read-only: `StoreUnavailable`) pauses a
batch, never fails it: the job stops, keeps its answers not yet committed in memory,
and the runner claims the batch again every `poll_s` until the store takes writes; a
line whose own request hit the store (a budget, a stored response) stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from serving import metrics
from serving.batch.admission import BatchAdmission
from serving.batch.models import BATCH_ENDPOINTS, InputLine
from serving.batch.store import BatchStore, LineResult
from serving.config import BatchConfig
from serving.errors import APIError, error_body
from serving.pipeline.context import Endpoint, Priority, RequestContext
from serving.pipeline.parse import parse_request
from serving.pipeline.pipeline import Pipeline
from serving.store.faults import StoreFault, StoreUnavailable
from serving.store.tables import BatchLineRow, BatchRow

if TYPE_CHECKING:
    from serving.responses.service import ResponsesService

logger = logging.getLogger("frugal.batch")

FLUSH_S = 0.1
FETCH = 512  # pending lines read from the store at a time


class BatchRunner:
    def __init__(self, store: BatchStore, pipeline: Pipeline, config: BatchConfig,
                 admission: BatchAdmission) -> None:
        self.store = store
        self.pipeline = pipeline
        self.config = config
        self.admission = admission
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"[:64]
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        #: Runs `/v1/responses` lines (set by serving.batch.app); None: they fail 400.
        self.responses: ResponsesService | None = None
        #: Answers a paused job could not commit, by batch id: committed on resume.
        self.unsaved: dict[str, list[LineResult]] = {}
        self.store_fault: StoreFault | None = None  # the store refused our last write
        #: Asks the engines for their sequence slots (set by serving.batch.app).
        self.engine_slots: Callable[[], Awaitable[list[int]]] | None = None
        self.gateway_replicas = 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self.jobs.values()]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self.jobs.values()] if t),
                             return_exceptions=True)

    async def _size_admission(self) -> None:
        """Size the idle cap to the engines; retried every `poll_s` until they answer."""
        if self.engine_slots is None:
            return
        try:
            slots = await asyncio.wait_for(self.engine_slots(), 30)
        except Exception as exc:  # engines still starting: the provisional cap holds
            logger.debug("batch runner: engine slots not known yet: %r", exc)
            return
        self.engine_slots = None
        cap = self.admission.size_to_engines(slots, self.gateway_replicas)
        logger.info("batch runner: up to %d lines in flight on idle engines "
                    "(engine slots %s)", cap, slots)

    async def _loop(self) -> None:
        while True:
            await self._size_admission()
            try:
                claimed = await asyncio.to_thread(self.store.claim, self.id,
                                                  self.config.lease_s, 8)
                for batch_id in claimed:
                    if batch_id not in self.jobs:
                        self.jobs[batch_id] = asyncio.create_task(self._job(batch_id))
                        self.jobs[batch_id].add_done_callback(
                            lambda _t, b=batch_id: self.jobs.pop(b, None))
            except StoreUnavailable as exc:
                self.store_refused(exc, "claiming batches")
            except Exception:
                logger.exception("batch runner: claiming failed; retrying")
            await asyncio.sleep(self.config.poll_s)

    def store_refused(self, exc: StoreUnavailable, doing: str) -> None:
        """Count a refused store write; log when the store stops taking writes (not at
        every retry: the runner retries every `poll_s`)."""
        metrics.STORE_ERRORS.labels(exc.fault, "batch").inc()
        if self.store_fault is None:
            logger.error("batch runner: %s: %s Batches wait (nothing is failed or lost) "
                         "and resume by themselves.", doing, exc.fault.message)
        self.store_fault = exc.fault

    def store_ok(self) -> None:
        """A write went through (answers committed, a batch done): log the recovery."""
        if self.store_fault is not None:
            logger.warning("batch runner: the store takes writes again; batches resume")
            self.store_fault = None

    async def _job(self, batch_id: str) -> None:
        """One batch, from wherever it stands, to its end (or until the lease is lost)."""
        work = asyncio.current_task()
        renewer = asyncio.create_task(self._renew(batch_id, work))
        try:
            batch = await asyncio.to_thread(self.store.get_batch, None, batch_id)
            if batch.status == "validating":
                await self._validate(batch)
                batch = await asyncio.to_thread(self.store.get_batch, None, batch_id)
            if batch.status == "in_progress":
                await _LineJob(self, batch).run()
            await self._finish(batch_id)
            self.store_ok()
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            self.store_refused(exc, f"batch {batch_id} paused")
        except Exception:
            logger.exception("batch %s: runner failed; another pass will resume it", batch_id)
        finally:
            renewer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, self.id, batch_id)

    async def _renew(self, batch_id: str, work: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                held = await asyncio.to_thread(self.store.renew, self.id, batch_id,
                                               self.config.lease_s)
            except StoreUnavailable as exc:
                self.store_refused(exc, f"batch {batch_id}: renewing the lease")
                continue
            except Exception:
                logger.exception("batch %s: lease renewal failed", batch_id)
                continue
            if not held and work is not None:
                logger.warning("batch %s: lease taken over by another runner", batch_id)
                work.cancel()
                return

    async def _finish(self, batch_id: str) -> None:
        status = await asyncio.to_thread(self.store.status, batch_id)
        if status not in ("in_progress", "finalizing", "cancelling"):
            return
        batch = await asyncio.to_thread(self.store.get_batch, None, batch_id)
        pending = await asyncio.to_thread(self.store.count_pending, batch_id)
        if status == "cancelling":
            code: str | None = "batch_cancelled"
        elif pending and time.time() > batch.expires_at:
            code = "batch_expired"
        elif pending:
            return  # lines left (the lease moved): whoever holds it finishes
        else:
            code = None
        await asyncio.to_thread(self.store.begin_finalizing, batch_id)
        final = await asyncio.to_thread(self.store.finalize, batch_id, code)
        logger.info("batch %s %s", batch_id, final)

    async def _validate(self, batch: BatchRow) -> None:
        try:
            lines, early, errors = await asyncio.to_thread(self._read_input, batch)
        except FileNotFoundError:
            lines, early, errors = [], [], [_error("file_not_found", "the input file is gone")]
        if errors:
            await asyncio.to_thread(self.store.fail_batch, batch.id, errors)
        else:
            await asyncio.to_thread(self.store.start_batch, batch.id, lines, early)

    def _read_input(self, batch: BatchRow
                    ) -> tuple[list[BatchLineRow], list[LineResult], list[dict[str, Any]]]:
        """Lines to run, lines that failed already (bad JSON or envelope), and reasons the
        whole batch is refused (too many lines, a duplicate custom_id, no lines)."""
        lines: list[BatchLineRow] = []
        early: list[LineResult] = []
        seen: dict[str, int] = {}
        with self.store.blobs.open(batch.input_file_id) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                if len(lines) + len(early) >= self.config.max_lines:
                    return [], [], [_error(
                        "too_many_lines", f"a batch holds at most {self.config.max_lines} "
                        "lines", number)]
                try:
                    item = InputLine.model_validate_json(raw)
                except ValidationError as exc:
                    early.append(_early_failure(batch, number, raw, exc))
                    continue
                if item.custom_id in seen:
                    return [], [], [_error(
                        "duplicate_custom_id", f"custom_id {item.custom_id!r} is used on "
                        f"lines {seen[item.custom_id]} and {number}", number, "custom_id")]
                seen[item.custom_id] = number
                if item.url != batch.endpoint:
                    early.append(_failure_line(batch, number, item.custom_id, "invalid_url",
                                               f"url {item.url!r} is not the batch's "
                                               f"endpoint {batch.endpoint!r}"))
                    continue
                lines.append(BatchLineRow(batch_id=batch.id, line=number,
                                          custom_id=item.custom_id,
                                          request=json.dumps(item.body), state="pending",
                                          attempts=0))
        if not lines and not early:
            return [], [], [_error("empty_file", "the input file has no lines")]
        return lines, early, []


class _LineJob:
    """The lines of one in-progress batch: dispatch under admission, commit in groups."""

    def __init__(self, runner: BatchRunner, batch: BatchRow) -> None:
        self.runner = runner
        self.store = runner.store
        self.batch = batch
        self.endpoint = Endpoint(BATCH_ENDPOINTS[batch.endpoint])
        self.done: list[LineResult] = runner.unsaved.pop(batch.id, [])
        self.fault: StoreUnavailable | None = None  # a line's request hit the store
        self.tasks: set[asyncio.Task[None]] = set()
        self.cancelled = False  # the batch is cancelling: start no more lines
        self._flushing = asyncio.Lock()  # a flush waits for the one in progress

    @property
    def stopping(self) -> bool:
        """Cancelled, past its window, or the store refused a line: start no more lines."""
        return (self.cancelled or self.fault is not None
                or time.time() > self.batch.expires_at)

    async def run(self) -> None:
        try:
            await self._flush()  # what a paused job of this batch answered first
            await self._run()
        except StoreUnavailable:
            self.runner.unsaved[self.batch.id] = self.done  # for the resumed job
            raise
        if self.fault is not None:
            raise self.fault

    async def _run(self) -> None:
        flusher = asyncio.create_task(self._flush_every())
        watcher = asyncio.create_task(self._watch())
        try:
            while not self.stopping:
                if not await self._dispatch_pass():
                    break
        finally:
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            watcher.cancel()
            flusher.cancel()
            await asyncio.shield(self._flush())

    async def _dispatch_pass(self) -> bool:
        """Start every pending line once; True when lines are still pending after it."""
        after = 0
        while not self.stopping:
            rows = await asyncio.to_thread(self.store.pending_lines, self.batch.id, FETCH,
                                           after)
            if not rows:
                break
            for row in rows:
                await self.runner.admission.acquire()
                if self.stopping:
                    self.runner.admission.release(None)
                    return False
                task = asyncio.create_task(self._line(row))
                self.runner.admission.hold(task)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                # In a callback, not in _line's `finally`: a task preempted before its
                # first step never enters _line's body, and its slot must come back too.
                task.add_done_callback(self.runner.admission.release)
            after = rows[-1].line
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._flush()
        return not self.stopping and bool(
            await asyncio.to_thread(self.store.count_pending, self.batch.id))

    async def _line(self, row: BatchLineRow) -> None:
        """One line; its admission slot is released by the task's done callback."""
        try:
            # Await first: `self.done.append(await ...)` would bind the list before the
            # await, and a flush that swaps the list meanwhile would drop the result.
            result = await run_line(self.runner.pipeline, self.batch, self.endpoint, row,
                                    self.runner.responses)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled while the engine call finished anyway: vLLM turns a cancelled
                # generation into a "Client disconnected" answer, which is not this
                # line's answer. Handled as the cancellation it is, just below.
                raise asyncio.CancelledError
            self.done.append(result)
        except StoreUnavailable as exc:  # its request must write the store: it stays
            self.fault = self.fault or exc  # pending, and the batch pauses
        except asyncio.CancelledError:
            if not self.runner.admission.preempted(asyncio.current_task()):
                raise
            # Preempted for interactive traffic before it had an answer: the line is
            # still pending, and the next dispatch pass starts it again.

    async def _watch(self) -> None:
        """Stop dispatching when the batch is cancelled."""
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(self.store.status, self.batch.id) == "cancelling":
                    self.cancelled = True

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self._flush()
            except StoreUnavailable as exc:
                self.runner.store_refused(exc, f"batch {self.batch.id}: committing answers")
            except Exception:
                logger.exception("batch %s: commit failed; will retry", self.batch.id)

    async def _flush(self) -> None:
        async with self._flushing:
            if not self.done:
                return
            results, self.done = self.done, []
            try:
                await asyncio.to_thread(self.store.commit_results, self.batch.id, results)
            except BaseException:
                self.done[:0] = results  # keep them for the next try
                raise
            self.runner.store_ok()


async def run_line(pipeline: Pipeline, batch: BatchRow, endpoint: Endpoint,
                   row: BatchLineRow, responses: ResponsesService | None = None) -> LineResult:
    """One line through the same pipeline as an online request, at batch priority
    (a `/v1/responses` line through the Responses translation, then that pipeline)."""
    ctx = RequestContext(endpoint=endpoint, priority=Priority.BATCH, key_label=batch.owner)
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    try:
        body = json.loads(row.request or "{}")
        if body.get("stream"):
            raise APIError(400, "stream is not supported in a batch line", param="stream")
        if batch.endpoint == "/v1/responses":
            if responses is None:
                raise APIError(400, "/v1/responses lines need the Responses API",
                               param="url")
            answer = await responses.create(ctx, body)
        else:
            ctx.request, ctx.extras, ctx.options = parse_request(
                body, endpoint, pipeline.chain.extra_fields)
            answer = await pipeline.run(ctx)
        status, out = answer.status, answer.body  # type: ignore[union-attr]
    except APIError as exc:
        status, out = exc.status, error_body(exc.status, exc.message, exc.param, exc.code, exc.type)
    except (asyncio.CancelledError, StoreUnavailable):  # not the line's answer: it waits
        raise
    except Exception as exc:  # a bug or an engine crash: the line fails, the batch goes on
        logger.exception("batch %s line %d failed", batch.id, row.line)
        status, out = 500, error_body(500, f"internal error: {type(exc).__name__}")
    output: dict[str, Any] = {
        "id": f"batch_req_{batch.id[6:]}_{row.line}", "custom_id": row.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": out},
        "error": None,
    }
    if status != 200:
        error = out.get("error") or {}
        output["error"] = {"code": str(error.get("type") or status),
                           "message": error.get("message", ""), "line": row.line}
    return LineResult(row.line, status, output, out.get("usage") if status == 200 else None)


def _error(code: str, message: str, line: int | None = None,
           param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


def _failure_line(batch: BatchRow, number: int, custom_id: str | None, code: str,
                  message: str) -> LineResult:
    return LineResult(number, None, {
        "id": f"batch_req_{batch.id[6:]}_{number}", "custom_id": custom_id, "response": None,
        "error": {"code": code, "message": message, "line": number},
    })


def _early_failure(batch: BatchRow, number: int, raw: bytes,
                   exc: ValidationError) -> LineResult:
    """A line that is not JSON, or not a `{custom_id, method, url, body}` object."""
    custom_id = None
    with contextlib.suppress(Exception):
        value = json.loads(raw).get("custom_id")
        custom_id = value if isinstance(value, str) else None
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return _failure_line(batch, number, custom_id, "invalid_json",
                             f"line {number} is not valid JSON: {first['msg']}")
    field = ".".join(str(p) for p in first["loc"])
    return _failure_line(batch, number, custom_id, "invalid_request",
                         f"line {number}: {field}: {first['msg']}")
