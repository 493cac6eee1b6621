"""`frugal bench quantize`: every method and bit width side by side against the 16-bit model.

For the largest zoo model: bytes on disk, resident memory of the serving engine, accuracy
delta on the held-out suite (from each artifact's gate run), and throughput and TTFT through
one `frugal serve` that hosts the 16-bit model and every CPU-servable artifact at once, so
all are measured in the same run on the same machine. Methods vLLM cannot serve on this
device get bytes and accuracy (scored with transformers) and "GPU only" for the rest.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: The side-by-side grid (method, bits): every method and bit width the issue asks for.
GRID: tuple[tuple[str, int], ...] = (
    ("gptq", 4),
    ("gptq", 8),
    ("w4a16", 4),
    ("w8a8", 8),
    ("bnb", 4),
    ("bnb", 8),
)
SOURCE_ID = "16-bit"


class Row(BaseModel):
    model: str
    method: str
    bits: int
    group_size: int | None
    bytes: int
    bytes_ratio: float
    accuracy: float | None
    accuracy_delta_points: float | None
    evaluated_with: str | None
    servable_on: list[str]
    engine_rss_mb: float | None = None
    throughput_tok_s: float | None = None
    throughput_ratio: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ratio: float | None = None


def largest_zoo_model() -> Path:
    from serving.zoo.paths import default_zoo_dir

    zoo = default_zoo_dir()
    for name in ("zoo-l", "zoo-m", "zoo-s"):
        if (zoo / name / "config.json").exists():
            return zoo / name
    raise FileNotFoundError(f"no zoo model in {zoo}: run `frugal zoo build`")


def produce(model: Path, method: str, bits: int, per_cell: int, say) -> tuple[Path, Any]:
    """Quantize and score one artifact, reusing one already made from the same weights."""
    from quantize import manifest as manifest_io
    from quantize import registry
    from quantize.methods import plan
    from quantize.pipeline import Request, run

    chosen = plan(model, method, bits)
    name = registry.artifact_name(model, method, bits, chosen.group_size)
    existing = registry.root() / name
    if (existing / manifest_io.MANIFEST_NAME).exists():
        manifest = manifest_io.read(existing)
        same = manifest.source_sha256 == manifest_io.hash_weights(model)
        if same and manifest.quality and manifest.quality.items == per_cell * 9:
            say(f"reusing {existing}")
            return existing, manifest
    # --force: the benchmark reports every artifact, including ones the gate would refuse.
    request = Request(model=model, method=method, bits=bits, eval_per_cell=per_cell, force=True)
    return run(request, say=say, progress=lambda *_: None)


def replica_rss_mb(model_id: str) -> float | None:
    """Resident memory of one model's Ray replica process and its children (vLLM's engine
    core runs in a child process), found by the Serve deployment name in its title."""
    import psutil

    from serving.config import ModelConfig

    deployment = ModelConfig.model_validate(
        {"model_loading_config": {"model_id": model_id, "model_source": "x"}}
    ).deployment_name
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica" in title and title.rstrip().endswith(deployment):
            procs = [proc, *proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running()) / 1e6
    return None


def measure(base_url: str, model: str, per_cell: int, concurrency: int):
    """(decode tok/s, TTFT p50 ms) from the scorecard harness on held-out items, with its
    throughput passes (decode: `ignore_eos` generations at `concurrency`)."""
    from serving.evaluation.scoring import evaluate_model
    from serving.zoo.tasks import EVAL_SEED, mixed_suite

    items = mixed_suite(per_cell, EVAL_SEED + 1)
    score = asyncio.run(evaluate_model(base_url, model, items, concurrency=concurrency))
    ttft = score.ttft_s.p50 * 1000 if score.ttft_s.p50 is not None else None
    return score.throughput.decode_tokens_per_s, ttft


def run_bench(
    model: Path,
    out_dir: Path,
    per_cell: int = 20,
    load_per_cell: int = 4,
    concurrency: int = 16,
    say=print,
) -> list[Row]:
    from quantize import manifest as manifest_io
    from quantize.evaluate import SERVE_READY_TIMEOUT_S, deployments_yaml, model_entry
    from serving.evaluation.launcher import frugal_server

    out_dir.mkdir(parents=True, exist_ok=True)
    source_bytes = manifest_io.dir_bytes(model)
    rows: list[Row] = []
    served: dict[str, tuple[Path, str | None]] = {SOURCE_ID: (model, None)}
    source_accuracy = None
    for method, bits in GRID:
        say(f"== {method} {bits}-bit")
        path, m = produce(model, method, bits, per_cell, say)
        q = m.quality
        if q is not None and q.evaluated_with == "vllm":
            source_accuracy = q.source_accuracy
        rows.append(
            Row(
                model=m.name,
                method=method,
                bits=bits,
                group_size=m.group_size,
                bytes=m.bytes,
                bytes_ratio=round(m.bytes / source_bytes, 3),
                accuracy=q.accuracy if q else None,
                accuracy_delta_points=q.delta_points if q else None,
                evaluated_with=q.evaluated_with if q else None,
                servable_on=list(m.servable_on),
            )
        )
        if "cpu" in m.servable_on:
            served[m.name] = (path, m.vllm_quantization)
    source = Row(
        model=SOURCE_ID,
        method="bf16",
        bits=16,
        group_size=None,
        bytes=source_bytes,
        bytes_ratio=1.0,
        accuracy=source_accuracy,
        accuracy_delta_points=0.0,
        evaluated_with="vllm",
        servable_on=["cpu", "gpu"],
    )
    rows.insert(0, source)

    say(f"serving {len(served)} models side by side for throughput, TTFT and memory")
    entries = [model_entry(mid, path, q) for mid, (path, q) in served.items()]
    with frugal_server(deployments_yaml(entries), timeout_s=SERVE_READY_TIMEOUT_S) as server:
        by_name = {r.model: r for r in rows}
        for mid in served:
            measure(server.url, mid, load_per_cell, concurrency)  # warm-up, not counted
            tput, ttft = measure(server.url, mid, load_per_cell, concurrency)
            row = by_name[mid]
            row.throughput_tok_s = round(tput, 1)
            row.ttft_ms_p50 = round(ttft, 1) if ttft is not None else None
            row.engine_rss_mb = replica_rss_mb(mid)
            say(f"{mid}: {tput:.0f} tok/s, TTFT p50 {ttft:.0f} ms, RSS {row.engine_rss_mb} MB")
    for row in rows:
        if row.throughput_tok_s and source.throughput_tok_s:
            row.throughput_ratio = round(row.throughput_tok_s / source.throughput_tok_s, 2)
        if row.ttft_ms_p50 and source.ttft_ms_p50:
            row.ttft_ratio = round(row.ttft_ms_p50 / source.ttft_ms_p50, 2)
    (out_dir / "quantize_bench.json").write_text(
        json.dumps(
            {
                "model": str(model),
                "items": per_cell * 9,
                "load": {"items": load_per_cell * 9, "concurrency": concurrency},
                "rows": [r.model_dump() for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    (out_dir / "quantize_bench.md").write_text(markdown(rows) + "\n")
    plot(rows, out_dir / "quantize_bench.png", model.name)
    return rows


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| artifact | method | bits | group | bytes | x 16-bit | accuracy | delta (points) | "
        "scored with | engine RSS (MB) | tok/s | x 16-bit | TTFT p50 (ms) | x 16-bit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpu_only = "GPU only" if "cpu" not in r.servable_on else "-"
        if not r.servable_on:
            gpu_only = "not servable"
        lines.append(
            f"| {r.model} | {r.method} | {r.bits} | {r.group_size if r.group_size else '-'} | "
            f"{r.bytes:,} | {r.bytes_ratio:.2f} | {_fmt(r.accuracy, '.1%')} | "
            f"{_fmt(r.accuracy_delta_points, '+.1f')} | {r.evaluated_with or '-'} | "
            f"{_fmt(r.engine_rss_mb, ',.0f', gpu_only)} | "
            f"{_fmt(r.throughput_tok_s, ',.0f', gpu_only)} | "
            f"{_fmt(r.throughput_ratio, '.2f', gpu_only)} | "
            f"{_fmt(r.ttft_ms_p50, ',.0f', gpu_only)} | {_fmt(r.ttft_ratio, '.2f', gpu_only)} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, model_name: str) -> None:
    """Bytes vs accuracy delta (every artifact) and throughput ratio (CPU-served ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        if r.accuracy_delta_points is None:
            continue
        marker = "o" if "cpu" in r.servable_on else "s"
        left.scatter(r.bytes_ratio, r.accuracy_delta_points, marker=marker, s=60)
        left.annotate(
            f"{r.method} {r.bits}b",
            (r.bytes_ratio, r.accuracy_delta_points),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    left.axhline(-3, color="red", linestyle="--", linewidth=1, label="-3 points")
    left.axvline(0.3, color="grey", linestyle=":", linewidth=1, label="0.3x bytes")
    left.set_xlabel("bytes on disk / 16-bit")
    left.set_ylabel("accuracy delta vs 16-bit (points)")
    left.set_title(f"{model_name}: size vs quality (o CPU-served, s GPU only)")
    left.legend(fontsize=8)
    served = [r for r in rows if r.throughput_tok_s]
    labels = [f"{r.method} {r.bits}b" for r in served]
    right.bar(
        labels,
        [r.throughput_ratio or 0 for r in served],
        color="tab:blue",
        label="throughput / 16-bit",
    )
    right.plot(
        labels,
        [r.ttft_ratio or 0 for r in served],
        "o-",
        color="tab:orange",
        label="TTFT p50 / 16-bit",
    )
    right.axhline(1.0, color="grey", linewidth=1)
    right.set_title("served on CPU through frugal (same run)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
