"""Where artifacts live and which ones are registered.

An artifact is a directory with a manifest (`frugal-quantize.json`). Registered artifacts
live under `artifacts/quantized/<name>/` in a checkout (or `$FRUGAL_ARTIFACTS_DIR`); one
written elsewhere with `--out` is recorded in that root's `external.json`. Work in progress
goes to `.staging-<name>/` and is moved into place only once the gate has passed (or
`--force`), so the registry never lists a half-written or refused artifact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from quantize import manifest as manifest_io
from quantize.manifest import Manifest

ENV_VAR = "FRUGAL_ARTIFACTS_DIR"
EXTERNAL = "external.json"


def root() -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / "artifacts" / "quantized"


def artifact_name(source: Path, method: str, bits: int, group_size: int | None) -> str:
    group = "" if group_size in (None, -1) or method == "bnb" else f"-g{group_size}"
    return f"{source.resolve().name}-{method}-w{bits}{group}"


def staging_dir(name: str) -> Path:
    return root() / f".staging-{name}"


def _external() -> list[str]:
    path = root() / EXTERNAL
    return json.loads(path.read_text()) if path.exists() else []


def register(staging: Path, name: str, out: Path | None = None) -> Path:
    """Move a finished artifact into place and record it; returns its final directory."""
    final = out.resolve() if out is not None else root() / name
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(final))
    if out is not None:
        entries = [e for e in _external() if e != str(final)] + [str(final)]
        (root() / EXTERNAL).write_text(json.dumps(entries, indent=2) + "\n")
    return final


def artifacts() -> list[tuple[Path, Manifest]]:
    """Every registered artifact with its manifest, ordered by name."""
    found: dict[Path, Manifest] = {}
    base = root()
    dirs = [p for p in base.iterdir() if p.is_dir()] if base.exists() else []
    dirs += [Path(e) for e in _external()] if base.exists() else []
    for path in dirs:
        if path.name.startswith(".") or not (path / manifest_io.MANIFEST_NAME).exists():
            continue
        found[path.resolve()] = manifest_io.read(path)
    return sorted(found.items(), key=lambda kv: kv[1].name)


def find(name: str) -> Path | None:
    for path, manifest in artifacts():
        if manifest.name == name:
            return path
    return None


def source_score_cache(source_sha: str, backend: str, suite: str) -> Path:
    """Cached 16-bit accuracy: the source is scored once per backend and suite."""
    safe = suite.replace(":", "_")
    return root() / ".scores" / f"{source_sha[:16]}-{backend}-{safe}.json"
