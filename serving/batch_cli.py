"""`frugal batch ...`: submit, watch and collect batch jobs (lever 4) from the shell.

A plain client of the OpenAI Files and Batches API, through the unmodified `openai` SDK,
so it works against any frugal server (and any other OpenAI-compatible one). The batch
id goes to stdout and everything meant for people (progress, tables, errors) to stderr,
so `BATCH=$(frugal batch submit in.jsonl)` works in scripts; `status` and `list` print
their tables to stdout.

Exit codes: 0 done, 1 an API error (unknown id, bad request, server unreachable) or a
batch that ended failed, expired or cancelled, 2 a bad local input (not JSONL, bad
`--metadata`), 130 interrupted while waiting (the batch keeps running on the server).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

app = typer.Typer(help="Batch jobs: the Files and Batches API (lever 4).",
                  no_args_is_help=True)

#: The server's default address (`http_options` in serving/config.py and
#: deployments/local.yaml: 127.0.0.1:8000).
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
TERMINAL = ("completed", "failed", "expired", "cancelled")
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at", "expires_at")

BaseUrl = Annotated[str, typer.Option(
    "--base-url", envvar="OPENAI_BASE_URL", help="The OpenAI-compatible endpoint (with /v1).")]
ApiKey = Annotated[str, typer.Option(
    "--api-key", envvar="OPENAI_API_KEY", help="API key (any value when the server has no "
    "gateway.api_keys).")]


def _stderr() -> Console:
    # Made per command, so COLUMNS and the streams are read when the command runs.
    return Console(stderr=True, soft_wrap=False)


def _client(base_url: str, api_key: str) -> OpenAI:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key, timeout=120)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _stderr().print(f"[red]error: {escape(message)}[/red]", soft_wrap=True, highlight=False)
    return typer.Exit(code)


class _ApiErrors:
    """Turn the SDK's errors into one red line and exit 1; `hint` is added to it (set it
    once a batch exists, to say how to find the batch again)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.hint = ""

    def __enter__(self) -> _ApiErrors:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        import openai

        if exc is None or not isinstance(exc, openai.APIError):
            return
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            message = body.get("message") or exc.message
            where = f" ({exc.request.method} {exc.request.url.path})"
            text = f"{exc.status_code} {message}{where}"
        elif isinstance(exc, openai.APIConnectionError):
            cause = f": {exc.__cause__}" if exc.__cause__ and str(exc.__cause__) else ""
            text = f"cannot reach {self.base_url} ({exc.message.rstrip('.')}{cause})"
        else:
            text = str(exc)
        raise _fail(text + (f"; {self.hint}" if self.hint else "")) from None


# --- input file ----------------------------------------------------------------------


def prepare_input(data: bytes, name: str, model: str | None) -> tuple[bytes, list[str]]:
    """Check that `data` is JSONL and set each line's `body.model` to `model` (when
    given). Lines that are not JSON objects stay as they are, for the server to report in
    the error file with their line number. Returns the bytes to upload and warnings;
    raises ValueError when the file is not JSONL at all."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text (byte {exc.start})") from None
    lines = text.split("\n")
    if not any(line.strip() for line in lines):
        raise ValueError(f"{name} is empty: write one request per line")
    objects, bad, unmodelled = 0, [], 0
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            out.append(line)
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            bad.append(number)
            out.append(line)
            continue
        objects += 1
        if model is not None:
            body = value.get("body")
            if isinstance(body, dict):
                body["model"] = model
                ending = "\r" if line.endswith("\r") else ""
                line = json.dumps(value, ensure_ascii=False) + ending
            else:
                unmodelled += 1
        out.append(line)
    if not objects:
        hint = ""
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(text), list):
                hint = " (it is one JSON array: write one request object per line)"
        raise ValueError(f"{name} is not JSONL: no line is a JSON object{hint}; each line "
                         'should be {"custom_id": ..., "method": "POST", "url": ..., '
                         '"body": {...}}')
    warnings = []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.append(f"{len(bad)} line(s) are not JSON objects (line {shown}); they are "
                        "uploaded as they are and come back in the error file")
    if unmodelled:
        warnings.append(f"{unmodelled} line(s) have no body object; --model left them as "
                        "they are")
    uploaded = "\n".join(out).encode() if model is not None else data
    return uploaded, warnings


def parse_metadata(pairs: list[str]) -> dict[str, str] | None:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata or None


# --- rendering -----------------------------------------------------------------------


def _when(stamp: int | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _usd(value: Any) -> str:
    return f"${value:,.6f}" if isinstance(value, int | float) else "-"


def _cost(batch: Batch) -> dict[str, Any]:
    """frugal's `cost: {total_usd, saved_by_batch_usd}` (not in OpenAI's shape)."""
    cost = (batch.model_extra or {}).get("cost")
    return cost if isinstance(cost, dict) else {}


def _counts(batch: Batch) -> tuple[int, int, int]:
    counts = batch.request_counts
    return (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)


def _status_style(status: str) -> str:
    colour = {"completed": "green", "failed": "red", "expired": "red",
              "cancelled": "yellow", "cancelling": "yellow"}.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


def batch_table(batch: Batch, *, full: bool = True) -> Table:
    table = Table(title=f"batch {batch.id}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    total, completed, failed = _counts(batch)
    cost = _cost(batch)
    table.add_row("status", _status_style(batch.status))
    if full:
        table.add_row("endpoint", batch.endpoint)
        if batch.model:
            table.add_row("model", batch.model)
        table.add_row("input file", batch.input_file_id)
    table.add_row("requests", f"{total} total, {completed} completed, {failed} failed")
    if batch.usage:
        usage = batch.usage
        table.add_row("tokens", f"{usage.input_tokens:,} in "
                      f"({usage.input_tokens_details.cached_tokens:,} cached), "
                      f"{usage.output_tokens:,} out "
                      f"({usage.output_tokens_details.reasoning_tokens:,} reasoning)")
    if cost:
        table.add_row("cost", _usd(cost.get("total_usd")))
        table.add_row("saved by batch", _usd(cost.get("saved_by_batch_usd")))
    table.add_row("output file", batch.output_file_id or "-")
    table.add_row("error file", batch.error_file_id or "-")
    if full:
        if batch.metadata:
            table.add_row("metadata", ", ".join(f"{k}={v}" for k, v in batch.metadata.items()))
        table.add_row("completion window", batch.completion_window)
        for stamp in TIMESTAMPS:
            value = getattr(batch, stamp, None)
            if value:
                table.add_row(stamp.removesuffix("_at").replace("_", " "), _when(value))
    elif batch.created_at:
        end = next((getattr(batch, s) for s in ("completed_at", "failed_at", "expired_at",
                                                "cancelled_at") if getattr(batch, s)), None)
        if end:
            table.add_row("took", f"{end - batch.created_at} s")
    return table


def errors_table(batch: Batch) -> Table | None:
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    if not errors:
        return None
    table = Table(title="batch errors", title_justify="left")
    for column in ("code", "line", "param", "message"):
        table.add_column(column, overflow="fold")
    for error in errors:
        table.add_row(error.code or "-", str(error.line) if error.line else "-",
                      error.param or "-", error.message or "")
    return table


# --- results -------------------------------------------------------------------------


def _input_order(client: OpenAI, batch: Batch) -> dict[str, int] | None:
    """custom_id -> line number in the input file, or None when it cannot be read."""
    import openai

    try:
        text = client.files.content(batch.input_file_id).content.decode("utf-8", "replace")
    except openai.APIError:
        return None
    order: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        with contextlib.suppress(ValueError, AttributeError):
            custom_id = json.loads(line).get("custom_id")
            if isinstance(custom_id, str):
                order.setdefault(custom_id, number)
    return order


def in_input_order(lines: list[str], order: dict[str, int]) -> list[str]:
    """Sort result lines by their request's input line: by custom_id, else by the line
    number an error carries; lines with neither keep their place at the end."""

    def key(item: tuple[int, str]) -> tuple[float, int]:
        index, line = item
        try:
            value = json.loads(line)
        except ValueError:
            return (math.inf, index)
        if not isinstance(value, dict):
            return (math.inf, index)
        number = order.get(value.get("custom_id")) if isinstance(
            value.get("custom_id"), str) else None
        error = value.get("error")
        if number is None and isinstance(error, dict) and isinstance(error.get("line"), int):
            number = error["line"]
        return (number if number is not None else math.inf, index)

    return [line for _, line in sorted(enumerate(lines), key=key)]


def fetch_results(client: OpenAI, batch: Batch, *, errors: bool, both: bool,
                  ordered: bool) -> list[str]:
    file_ids = [batch.output_file_id, batch.error_file_id] if both else [
        batch.error_file_id if errors else batch.output_file_id]
    lines: list[str] = []
    for file_id in file_ids:
        if file_id:
            text = client.files.content(file_id).content.decode("utf-8")
            lines.extend(line for line in text.split("\n") if line.strip())
    if ordered and lines:
        order = _input_order(client, batch)
        if order is not None:
            lines = in_input_order(lines, order)
    return lines


def _emit(lines: list[str], output: Path | None, console: Console) -> None:
    text = "".join(f"{line}\n" for line in lines)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(lines)} line(s) to {output}", highlight=False)


# --- commands ------------------------------------------------------------------------


class WaitTimeout(Exception):
    """`--wait-timeout` ran out (the batch goes on on the server)."""


def _wait(client: OpenAI, batch: Batch, poll_interval: float, console: Console,
          timeout_s: float | None = None) -> Batch:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:>11}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    deadline = time.monotonic() + timeout_s if timeout_s is not None else math.inf
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(batch.status, total=None, failed=0)
        while True:
            total, completed, failed = _counts(batch)
            progress.update(task, description=batch.status, total=total or None,
                            completed=completed + failed, failed=failed)
            if batch.status in TERMINAL:
                return batch
            if time.monotonic() >= deadline:
                raise WaitTimeout(batch.status)
            time.sleep(poll_interval)
            batch = client.batches.retrieve(batch.id)


@app.command("submit")
def submit(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="Input JSONL: one {custom_id, method, url, body} a line."),
    endpoint: str = typer.Option("/v1/chat/completions", help="The endpoint every line "
                                 "targets (/v1/chat/completions or /v1/completions)."),
    model: str | None = typer.Option(None, help="Set every line's body.model (e.g. auto) "
                                     "before the upload."),
    metadata: list[str] = typer.Option([], "--metadata", help="KEY=VALUE, repeatable."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the batch ends, "
                              "then a summary; exit 1 unless it completed."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --wait: write "
                                       "the results here, in input order (implies --wait)."),
    poll_interval: float = typer.Option(2.0, min=0.01, help="Seconds between polls."),
    wait_timeout: float | None = typer.Option(None, min=0, help="Stop waiting after this "
                                              "many seconds (exit 1; the batch goes on)."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = "frugal",
) -> None:
    """Upload FILE, create a batch on it (24h window) and print the batch id."""
    console = _stderr()
    try:
        data, warnings = prepare_input(file.read_bytes(), file.name, model)
        meta = parse_metadata(metadata)
    except ValueError as exc:
        raise _fail(str(exc), code=2) from None
    for warning in warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]", highlight=False)
    client = _client(base_url, api_key)
    with _ApiErrors(base_url) as guard:
        uploaded = client.files.create(file=(file.name, data), purpose="batch")
        console.print(f"uploaded {file.name} ({uploaded.bytes:,} bytes) as {uploaded.id}",
                      highlight=False)
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                      completion_window="24h", metadata=meta)
        typer.echo(batch.id)
        if not (wait or output):
            return
        guard.hint = f"{batch.id} goes on on the server: `frugal batch status {batch.id}`"
        try:
            batch = _wait(client, batch, poll_interval, console, wait_timeout)
        except WaitTimeout as exc:
            raise _fail(f"still {exc.args[0]} after {wait_timeout:g} s; "
                        f"{guard.hint}") from None
        except KeyboardInterrupt:
            console.print(f"\n{batch.id} goes on on the server: `frugal batch status "
                          f"{batch.id}`, `frugal batch cancel {batch.id}`", highlight=False)
            raise typer.Exit(130) from None
        console.print(batch_table(batch, full=False))
        problems = errors_table(batch)
        if problems is not None:
            console.print(problems)
        if output is not None:
            _emit(fetch_results(client, batch, errors=False, both=False, ordered=True),
                  output, console)
    if batch.status != "completed":
        raise _fail(f"batch {batch.id} {batch.status}")


@app.command("status")
def status(
    batch_id: str = typer.Argument(..., help="The batch id (batch_...)."),
    json_out: bool = typer.Option(False, "--json", help="Print the batch object as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = "frugal",
) -> None:
    """A batch's fields, request counts, cost, timestamps and errors."""
    with _ApiErrors(base_url):
        batch = _client(base_url, api_key).batches.retrieve(batch_id)
    if json_out:
        typer.echo(batch.model_dump_json(indent=2))
        return
    console = Console()
    console.print(batch_table(batch))
    problems = errors_table(batch)
    if problems is not None:
        console.print(problems)


@app.command("results")
def results(
    batch_id: str = typer.Argument(..., help="The batch id (batch_...)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead "
                                       "of stdout."),
    errors: bool = typer.Option(False, "--errors", help="The error file's lines instead."),
    both: bool = typer.Option(False, "--all", help="Output and error lines together."),
    ordered: bool = typer.Option(True, "--input-order/--server-order", help="Sort lines by "
                                 "their request's line in the input file."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = "frugal",
) -> None:
    """A batch's result lines (JSONL), in input order by custom_id."""
    console = _stderr()
    client = _client(base_url, api_key)
    with _ApiErrors(base_url):
        batch = client.batches.retrieve(batch_id)
        wanted = [batch.output_file_id, batch.error_file_id] if both else [
            batch.error_file_id if errors else batch.output_file_id]
        if not any(wanted) and batch.status not in TERMINAL:
            raise _fail(f"batch {batch.id} is {batch.status}: no results yet (wait with "
                        f"`frugal batch status {batch.id}`)")
        lines = fetch_results(client, batch, errors=errors, both=both, ordered=ordered)
    if not lines:
        console.print(f"batch {batch.id} ({batch.status}) has no "
                      f"{'error' if errors else 'result'} lines", highlight=False)
    _emit(lines, output, console)


@app.command("cancel")
def cancel(
    batch_id: str = typer.Argument(..., help="The batch id (batch_...)."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = "frugal",
) -> None:
    """Cancel a batch: lines not started are not run; finished ones stay in the output."""
    with _ApiErrors(base_url):
        batch = _client(base_url, api_key).batches.cancel(batch_id)
    total, completed, failed = _counts(batch)
    Console().print(f"{batch.id}: {_status_style(batch.status)} ({completed + failed} of "
                    f"{total} requests done)", highlight=False)


@app.command("list")
def list_batches(
    limit: int = typer.Option(20, min=1, max=100, help="Batches to show, newest first."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = "frugal",
) -> None:
    """Recent batches, newest first."""
    with _ApiErrors(base_url):
        page = _client(base_url, api_key).batches.list(limit=limit)
    table = Table(title="batches")
    table.add_column("id", overflow="fold")
    table.add_column("status")
    table.add_column("endpoint")
    for column in ("done", "failed"):
        table.add_column(column, justify="right")
    table.add_column("created")
    table.add_column("cost", justify="right")
    for batch in page.data:
        total, completed, failed = _counts(batch)
        table.add_row(batch.id, _status_style(batch.status), batch.endpoint,
                      f"{completed + failed}/{total}", str(failed), _when(batch.created_at),
                      _usd(_cost(batch).get("total_usd")))
    console = Console()
    console.print(table)
    if page.has_more:
        console.print(f"(more: --limit {min(100, limit * 2)})", highlight=False)
