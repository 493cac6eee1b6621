"""The package graph reads bottom-up: every module is parsed with `ast` and its imports
checked against the layers (no module is imported, so this runs in a second).

    core serving          config, app, gateway, engine, router, metrics, cost, ...
    serving.evaluation    item/checker format, scoring, the `frugal serve` launcher
    serving.zoo           the demo zoo (generates items in the evaluation format)
    quantize              the quantization pipeline
    serving.bench         the benchmarks
    serving/cli.py        the composition root (with the *_cli.py command modules)

A layer imports only layers below it. Every import counts: module level, inside
functions, under `if TYPE_CHECKING:`, relative ones, `from serving import zoo`, and
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / "serving"

#: Not core: these layers sit above it, and so do the command modules (they wire layers).
NOT_CORE_PACKAGES = ("serving/bench", "serving/zoo", "serving/evaluation")
#: What may never be imported by the layer named in the test; `bench` is the old
#: top-level name of serving.bench, caught so that it cannot come back.
ABOVE_CORE = ("serving.bench", "serving.zoo", "quantize", "bench")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module name `path` imports: `a.b` for `import a.b`, and for
    `from a import b` both `a` and `a.b` (b may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (name in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.add(node.args[0].value)
    return found


def violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """`file: module` for each import of a forbidden package (or anything inside it)."""
    bad = []
    for path in paths:
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{_rel(path)}: {module}")
    return bad


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def core_files() -> list[Path]:
    def is_core(path: Path) -> bool:
        rel = _rel(path)
        if any(rel == pkg or rel.startswith(pkg + "/") for pkg in NOT_CORE_PACKAGES):
            return False
        return rel != "serving/cli.py" and not path.name.endswith("_cli.py")

    return [p for p in _files(SERVING) if is_core(p)]


def test_the_layers_are_found() -> None:
    """Guards the globs: an empty layer would make every check below pass."""
    core = {_rel(p) for p in core_files()}
    assert {"serving/config.py", "serving/gateway.py", "serving/engine.py",
            "serving/router/runtime.py", "serving/router/scorecard.py"} <= core
    assert not core & {"serving/cli.py", "serving/serve_cli.py", "serving/cache_cli.py"}
    assert not any(rel.startswith(NOT_CORE_PACKAGES) for rel in core)
    for folder in ("serving/evaluation", "serving/bench", "serving/zoo", "quantize"):
        assert len(_files(REPO / folder)) >= 3, folder
    assert not (REPO / "bench").exists(), "the benchmarks live in serving/bench/"


def test_core_serving_imports_no_benchmark_zoo_or_quantize() -> None:
    assert violations(core_files(), ABOVE_CORE) == []


def test_evaluation_imports_no_benchmark_zoo_or_quantize() -> None:
    assert violations(_files(SERVING / "evaluation"), ABOVE_CORE) == []


def test_quantize_imports_no_benchmark() -> None:
    assert violations(_files(REPO / "quantize"), ("serving.bench", "bench")) == []


def test_quantize_takes_from_the_zoo_only_its_task_suite() -> None:
    """quantize calibrates on and gates with the demo suite (`serving.zoo.tasks`); the
    rest of the zoo (training, checkpoints, cards) is not its business."""
    def zoo_but_not_its_suite(module: str) -> bool:
        if module in ("serving.zoo", "serving.zoo.tasks"):
            return False
        return module.startswith("serving.zoo.") and not module.startswith("serving.zoo.tasks.")

    bad = [f"{_rel(path)}: {module}" for path in _files(REPO / "quantize")
           for module in sorted(imported_modules(path)) if zoo_but_not_its_suite(module)]
    assert bad == []


def test_the_production_scorecard_does_not_import_the_zoo() -> None:
    path = SERVING / "router" / "scorecard.py"
    assert violations([path], ("serving.zoo",)) == []
    assert "serving.evaluation.items" in imported_modules(path)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from serving.zoo.tasks import TaskItem\n", "serving.zoo.tasks"),
        ("import serving.bench.eval\n", "serving.bench.eval"),
        ("from serving import zoo\n", "serving.zoo"),
        ("from ..bench import eval\n", "serving.bench"),
        ("def f():\n    from quantize import registry\n", "quantize"),
        ("import importlib\nimportlib.import_module('serving.zoo.cards')\n", "serving.zoo.cards"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bench.servers\n",
         "bench.servers"),
    ],
)
def test_a_bad_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                source: str, caught: str) -> None:
    """The checker itself: each way of importing a layer above is reported."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    module = tmp_path / "serving" / "router" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    assert any(v.startswith("serving/router/bad.py: ") and v.endswith(caught)
               for v in violations([module], ABOVE_CORE)), violations([module], ABOVE_CORE)


def test_harmless_names_are_not_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    module = tmp_path / "serving" / "router" / "fine.py"
    module.parent.mkdir(parents=True)
    module.write_text("import benchmark_tools\nfrom serving.quantization import x\n"
                      "from serving.evaluation.items import TaskItem\n")
    assert violations([module], ABOVE_CORE) == []


# --- the composition root -------------------------------------------------------------

SUB_COMMANDS = {"serve", "config", "zoo", "bench", "cache", "quantize", "router",
                "batch", "keys", "openapi"}
#: What `frugal --help` must not pay for: each is imported inside a command function.
HEAVY = {"vllm", "torch", "ray", "transformers", "numpy", "matplotlib", "httpx", "aiohttp",
         "openai", "safetensors"}


def test_the_cli_root_adds_every_sub_app() -> None:
    from serving.cli import app

    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == SUB_COMMANDS


def test_frugal_help_imports_nothing_heavy() -> None:
    code = ("import sys, serving.cli\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert set(out.split()) & HEAVY == set()
