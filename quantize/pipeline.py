"""`frugal quantize`, step by step: check -> tool venv -> calibrate + quantize -> manifest ->
score against the 16-bit source -> gate -> register.

Everything that can be wrong with the request is checked first (`methods.plan`, the
calibration file, the output directory), so a mistake costs seconds, not a quantization run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from quantize import calib as calibration
from quantize import env, evaluate, gate, registry
from quantize import manifest as manifest_io
from quantize.evaluate import OnServed
from quantize.manifest import Calibration, Manifest, Quality
from quantize.methods import QuantizeError, plan
from quantize.workers_run import run_worker

Progress = Callable[[str, int, int], None]
Say = Callable[[str], None]


class Request(BaseModel):
    model: Path
    method: str
    bits: int
    group_size: int | None = None
    calib: Path | None = None
    calib_per_cell: int = calibration.DEFAULT_PER_CELL
    out: Path | None = None
    tolerance_points: float = gate.DEFAULT_TOLERANCE_POINTS
    force: bool = False
    eval_per_cell: int = evaluate.DEFAULT_EVAL_PER_CELL
    evaluate: bool = True


class Refused(Exception):
    """The gate refused the artifact; `manifest` holds the measurement."""

    def __init__(self, message: str, manifest: Manifest):
        super().__init__(message)
        self.manifest = manifest


def this_device() -> str:
    try:
        gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except FileNotFoundError:
        gpu = False
    return "gpu" if gpu else "cpu"


def run(
    request: Request, say: Say, progress: Progress, on_served: OnServed | None = None
) -> tuple[Path, Manifest]:
    """Produce, score, gate and register one artifact. Raises QuantizeError for bad input
    (before any long work) and Refused when the gate fails without --force. `on_served`
    is called with the gate server's base URL while it serves the artifact as `artifact`."""
    source = request.model.resolve()
    if not source.is_dir():
        raise QuantizeError(f"{request.model}: no such model directory")
    chosen = plan(source, request.method, request.bits, request.group_size)
    spec = chosen.spec
    if request.calib is not None and not request.calib.exists():
        raise QuantizeError(f"--calib {request.calib}: no such file")
    if request.out is not None and request.out.exists() and any(request.out.iterdir()):
        if not (request.out / manifest_io.MANIFEST_NAME).exists():
            raise QuantizeError(f"--out {request.out} exists and is not an artifact; pick another")
    name = artifact_name = registry.artifact_name(
        source, chosen.method, chosen.bits, chosen.group_size
    )
    say(f"{artifact_name}: {spec.description}, group size {chosen.group_size}")

    env.ensure(on_step=say)

    calib_set = None
    if spec.calibrated:
        calib_set = (
            calibration.from_jsonl(source, request.calib)
            if request.calib
            else calibration.from_suite(source, request.calib_per_cell)
        )
        say(f"calibration: {len(calib_set.texts)} samples from {calib_set.source}")

    staging = registry.staging_dir(name)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    work = Path(str(staging) + ".work")
    work.mkdir(exist_ok=True)
    worker_spec = {
        "method": chosen.method,
        "bits": chosen.bits,
        "group_size": chosen.group_size,
        "source": str(source),
        "out": str(staging),
        "max_seq_len": calibration.MAX_SEQ_LEN,
    }
    if calib_set is not None:
        worker_spec["calib_file"] = str(calib_set.write_jsonl(work / "calib.jsonl"))
    started = time.monotonic()
    result = run_worker(spec.worker, worker_spec, work, progress)
    seconds = time.monotonic() - started
    devices = spec.devices(chosen.bits)
    manifest = Manifest(
        name=name,
        source_model=str(source),
        source_sha256=manifest_io.hash_weights(source),
        source_bytes=manifest_io.dir_bytes(source),
        method=chosen.method,
        bits=chosen.bits,
        group_size=chosen.group_size,
        vllm_quantization=spec.vllm_quantization,
        servable_on=devices,
        servable_evidence=spec.evidence.get(chosen.bits, ""),
        calibration=Calibration(
            source=calib_set.source,
            sha256=calib_set.sha256,
            samples=len(calib_set.texts),
            max_seq_len=calibration.MAX_SEQ_LEN,
        )
        if calib_set
        else None,
        bytes=manifest_io.dir_bytes(staging),
        tools=result["tools"],
        quantize_seconds=round(seconds, 1),
    )
    manifest_io.write(staging, manifest)
    say(
        f"quantized in {seconds:.0f}s: {manifest.bytes / 1e6:.2f} MB vs "
        f"{manifest.source_bytes / 1e6:.2f} MB (x{manifest.bytes / manifest.source_bytes:.2f})"
    )

    if request.evaluate:
        manifest.quality = score(
            staging, manifest, request.eval_per_cell, work, say, progress, on_served
        )
        manifest.gate = gate.decide(manifest.quality, request.tolerance_points, request.force)
        manifest_io.write(staging, manifest)
        if not manifest.gate.passed and not request.force:
            message = gate.refusal(manifest.quality, manifest.gate)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            raise Refused(message, manifest)
    final = registry.register(staging, name, request.out)
    shutil.rmtree(work, ignore_errors=True)
    return final, manifest


def score(
    artifact: Path,
    manifest: Manifest,
    per_cell: int,
    work: Path,
    say: Say,
    progress: Progress,
    on_served: OnServed | None = None,
) -> Quality:
    """Accuracy of the artifact and of its source on the held-out suite, same backend."""
    items = evaluate.eval_items(per_cell)
    suite = f"suite:{per_cell}:{evaluate.EVAL_SEED}"
    source = Path(manifest.source_model)
    backend = "vllm" if this_device() in manifest.servable_on else "transformers"
    cache = registry.source_score_cache(manifest.source_sha256, backend, suite)
    source_acc = json.loads(cache.read_text())["accuracy"] if cache.exists() else None
    if backend == "vllm":
        models = {"artifact": (artifact, manifest.vllm_quantization)}
        if source_acc is None:
            models["source"] = (source, None)
        say(
            f"scoring on {len(items)} held-out items through `frugal serve` ({len(models)} "
            "engine(s); about a minute to start)"
        )
        scores = evaluate.score_served(models, items, work, on_served)
        accuracy = scores["artifact"].accuracy
        if source_acc is None:
            source_acc = scores["source"].accuracy
    else:
        paths = [artifact] + ([source] if source_acc is None else [])
        say(
            f"scoring on {len(items)} held-out items with transformers (vLLM serves "
            f"{manifest.method} {manifest.bits}-bit only on {', '.join(manifest.servable_on)})"
        )
        scores_t = evaluate.score_transformers(paths, items, work, progress)
        accuracy = scores_t[artifact].accuracy
        if source_acc is None:
            source_acc = scores_t[source].accuracy
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"accuracy": source_acc, "items": len(items)}))
    return Quality(
        accuracy=accuracy,
        source_accuracy=source_acc,
        delta_points=round((accuracy - source_acc) * 100, 2),
        items=len(items),
        suite=suite,
        evaluated_with=backend,
    )
