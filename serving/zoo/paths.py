"""Where the zoo lives on disk.

One rule, used by the CLI, the server tests and the deployments: `FRUGAL_ZOO_DIR` wins;
in a source checkout the shipped `zoo/` beside the package is used (so CI needs no
training); an installed package falls back to a per-user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FRUGAL_ZOO_DIR"


def repo_root() -> Path | None:
    """The checkout root when this package runs from a source tree, else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists() and (root / "serving").is_dir():
        return root
    return None


def default_zoo_dir() -> Path:
    """`$FRUGAL_ZOO_DIR`, else `<repo>/zoo` in a checkout, else `~/.cache/frugal/zoo`."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    root = repo_root()
    if root is not None:
        return root / "zoo"
    return Path.home() / ".cache" / "frugal" / "zoo"
