"""Running a worker script in the tool venv: spec file in, progress lines and a result out."""

from __future__ import annotations

import json
import os
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantize import env

Progress = Callable[[str, int, int], None]


class WorkerError(RuntimeError):
    """A worker exited non-zero; the message holds the end of its log."""


def run_worker(
    script: str, spec: dict[str, Any], workdir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Run quantize/workers/SCRIPT with SPEC in the tool venv; return its RESULT payload.

    The full log goes to WORKDIR/<script>.log; errors quote its last lines.
    """
    python = env.ensure()
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{Path(script).stem}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{Path(script).stem}.log"
    tail: deque[str] = deque(maxlen=25)
    payload: dict[str, Any] | None = None
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    # The serving venv's variables must not leak into the tool venv's interpreter.
    child_env.pop("VIRTUAL_ENV", None)
    child_env.pop("PYTHONPATH", None)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(python), str(env.worker_path(script)), str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            cwd=workdir,  # llm-compressor writes a logs/ folder into its working directory
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith("PROGRESS ") and progress is not None:
                _, done, total, stage = line.rstrip("\n").split(" ", 3)
                progress(stage, int(done), int(total))
            elif line.startswith("RESULT "):
                payload = json.loads(line[len("RESULT ") :])
            else:
                tail.append(line.rstrip("\n"))
        code = proc.wait()
    if code != 0 or payload is None:
        raise WorkerError(f"{script} failed (exit {code}; log {log_path}):\n" + "\n".join(tail))
    return payload
