"""The manifest written next to each artifact (`frugal-quantize.json`).

It is what makes an artifact comparable and reproducible: where it came from (source model
and the hash of its weights), how it was made (method, bits, group size, calibration set
hash and size, tool versions), what it costs (bytes on disk) and what it is worth (scorecard
accuracy against the 16-bit original, on the same held-out items, and the gate's verdict).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST_NAME = "frugal-quantize.json"
#: Files that carry model weights; their hash identifies the source model.
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class Calibration(BaseModel):
    source: str = Field(description="'suite:<n per cell>:<seed>' or the user's JSONL path.")
    sha256: str = Field(description="Hash of the rendered calibration texts, in order.")
    samples: int
    max_seq_len: int


class Quality(BaseModel):
    """Scorecard accuracy of the artifact and of its 16-bit source on the same items."""

    accuracy: float
    source_accuracy: float
    delta_points: float = Field(description="(accuracy - source_accuracy) * 100.")
    items: int
    suite: str = Field(description="Which held-out items: 'suite:<n per cell>:<seed>'.")
    evaluated_with: Literal["vllm", "transformers"] = Field(
        description="vllm: served by `frugal serve` and scored by the scorecard harness; "
        "transformers: greedy generate() in the tool venv (methods vLLM cannot run on this device)."
    )


class Gate(BaseModel):
    tolerance_points: float
    passed: bool
    forced: bool = Field(False, description="Kept with --force although it failed.")

    @property
    def label(self) -> str:
        if self.passed:
            return "pass"
        return "fail (forced)" if self.forced else "fail"


class Manifest(BaseModel):
    name: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    source_model: str
    source_sha256: str
    source_bytes: int
    method: str
    bits: int
    group_size: int | None
    vllm_quantization: str
    servable_on: list[Literal["cpu", "gpu"]]
    servable_evidence: str
    calibration: Calibration | None
    bytes: int
    tools: dict[str, str]
    quantize_seconds: float
    quality: Quality | None = None
    gate: Gate | None = None

    def summary(self) -> dict[str, object]:
        """The flat record `frugal quantize list --json` prints for each artifact."""
        return {
            "name": self.name,
            "method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "bytes": self.bytes,
            "source_bytes": self.source_bytes,
            "accuracy": self.quality.accuracy if self.quality else None,
            "source_accuracy": self.quality.source_accuracy if self.quality else None,
            "gate": self.gate.label if self.gate else "not evaluated",
            "servable_on": self.servable_on,
            "source_model": self.source_model,
            "manifest": self.model_dump(mode="json"),
        }


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def hash_weights(model_dir: Path) -> str:
    """SHA-256 over the weight files (name and content), in name order."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dir_bytes(model_dir: Path) -> int:
    """Bytes on disk of everything a server loads (the manifest itself excluded)."""
    return sum(
        p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def write(model_dir: Path, manifest: Manifest) -> Path:
    path = model_dir / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read(model_dir: Path) -> Manifest:
    return Manifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
